package pgtest

import (
	"strings"
	"testing"
)

func TestClusterStartsStopsAndComesBack(t *testing.T) {
	c, err := Start(Options{})
	if err != nil {
		t.Fatal(err)
	}
	defer c.Close()
	if out, err := c.SQL("CREATE TABLE t (x int); INSERT INTO t VALUES (42)"); err != nil {
		t.Fatalf("%v: %s", err, out)
	}
	if err := c.Stop(); err != nil {
		t.Fatal(err)
	}
	if _, err := c.SQL("SELECT 1"); err == nil {
		t.Fatal("the stopped server still answers")
	}
	if err := c.Restart(); err != nil {
		t.Fatal(err)
	}
	out, err := c.SQL("SELECT x FROM t")
	if err != nil || strings.TrimSpace(out) != "42" {
		t.Fatalf("after a restart: %q %v (the data must survive)", out, err)
	}
	if out, _ := c.SQL("SELECT current_user"); out != "xapsd" {
		t.Errorf("connected as %q, want xapsd", out)
	}
}
