package apns

import (
	"context"
	"errors"
	"testing"
	"time"

	"github.com/sideshow/apns2"

	"github.com/xapsd/xapsd/internal/registry"
)

// answering is a Remover that gives one answer.
type answering struct {
	kept bool
	err  error
}

func (a answering) Remove(context.Context, registry.Key, time.Time) (bool, error) {
	return a.kept, a.err
}

// A dead token's push says what became of its registration: removed;
// kept, because the device registered again after the time Apple gives;
// or failed, because the removal could not be stored (a full disk, a
// database that is down), so that the two are not one outcome.
func TestDeadTokenOutcomeSaysWhetherItsRegistrationWentOrStayed(t *testing.T) {
	for _, c := range []struct {
		name string
		rm   answering
		want Outcome
	}{
		{"removed", answering{}, Removed},
		{"registered again since", answering{kept: true}, Kept},
		{"removal not stored", answering{err: errors.New("no space left on device")}, Failed},
	} {
		t.Run(c.name, func(t *testing.T) {
			tr := &scripted{answer: func(*apns2.Notification, int) (*apns2.Response, error) {
				return &apns2.Response{StatusCode: 410, Reason: "Unregistered", Timestamp: apns2.Time{Time: time.Now()}}, nil
			}}
			s, res := start(t, tr, Options{Remover: c.rm})
			s.Enqueue(dev)
			if r := res.wait(t); r.Outcome != c.want || r.Reason != "Unregistered" {
				t.Errorf("result %+v, want %s", r, c.want)
			}
		})
	}
}
