package config

import "reflect"

// ChangedKeys lists the keys (legacy spelling, struct order) whose values
// differ between a and b.
func ChangedKeys(a, b *Config) []string {
	va, vb := reflect.ValueOf(a).Elem(), reflect.ValueOf(b).Elem()
	var out []string
	for _, k := range keys() {
		if !va.Field(k.field).Equal(vb.Field(k.field)) {
			out = append(out, k.name)
		}
	}
	return out
}
