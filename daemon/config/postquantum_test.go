package config

import (
	"io"
	"strings"
	"testing"
	"time"
)

func TestPostQuantumFlags(t *testing.T) {
	c, err := Parse("wgcnid", []string{"--node-name", "n1"}, io.Discard)
	if err != nil {
		t.Fatal(err)
	}
	if c.PostQuantum != (PostQuantum{Mode: PQOff, Interval: 2 * time.Minute, Port: 51822, MaxAge: 6 * time.Minute}) {
		t.Fatalf("defaults: %+v", c.PostQuantum)
	}
	c, err = Parse("wgcnid", []string{"--node-name", "n1", "--post-quantum", "required", "--pq-interval", "30s", "--pq-port", "6000"}, io.Discard)
	if err != nil || c.PostQuantum != (PostQuantum{Mode: PQRequired, Interval: 30 * time.Second, Port: 6000, MaxAge: 90 * time.Second}) {
		t.Fatalf("set: %+v %v", c.PostQuantum, err)
	}
	c, err = Parse("wgcnid", []string{"--node-name", "n1", "--post-quantum", "required", "--pq-interval", "30s", "--pq-max-age", "1m"}, io.Discard)
	if err != nil || c.PostQuantum.MaxAge != time.Minute {
		t.Fatalf("--pq-max-age 1m: %+v %v", c.PostQuantum, err)
	}
	for _, tc := range []struct {
		args []string
		flag string
	}{
		{[]string{"--post-quantum", "yes"}, "--post-quantum"},
		{[]string{"--pq-interval", "500ms"}, "--pq-interval"},
		{[]string{"--pq-port", "51820"}, "--pq-port"},
		{[]string{"--pq-port", "51821"}, "--pq-port"},
		{[]string{"--pq-port", "70000"}, "--pq-port"},
		{[]string{"--pq-interval", "30s", "--pq-max-age", "59s"}, "--pq-max-age"},
		{[]string{"--pq-max-age", "-1s"}, "--pq-max-age"},
	} {
		_, err := Parse("wgcnid", append([]string{"--node-name", "n1"}, tc.args...), io.Discard)
		if err == nil || !strings.HasPrefix(err.Error(), tc.flag+":") {
			t.Errorf("%v: %v, want an error naming %s", tc.args, err, tc.flag)
		}
	}
}
