package main

import (
	"bytes"
	"testing"
	"time"

	"github.com/wgcni/wgcni/tests/harness"
)

// TestSmoke runs the benchmark at a tiny size so `make test` proves it
// works, and checks the properties that do not depend on machine speed:
// cold start reads etcd in a constant number of requests (no per-record
// calls), every event is applied, and the steady state is one KeepAlive
// stream and one watch with no requests.
func TestSmoke(t *testing.T) {
	harness.Require(t)
	res, err := Run(Options{Sizes: []int{30}, Events: 6, Steady: 2 * time.Second, Logf: t.Logf})
	var out bytes.Buffer
	Print(&out, res)
	t.Log("\n" + out.String())
	if err != nil {
		t.Fatal(err)
	}
	r := res[0]
	if r.Cold <= 0 {
		t.Errorf("cold start %v", r.Cold)
	}
	for _, k := range []string{"new", "changed", "deleted"} {
		if len(r.Lat[k]) != 2 {
			t.Errorf("%s events measured: %d, want 2", k, len(r.Lat[k]))
		}
	}
	if n := sum(r.ColdRequests); n > 12 {
		t.Errorf("cold start made %g etcd requests for 30 records (%s); want a constant handful", n, fmtMethods(r.ColdRequests))
	}
	// The cluster config, our own lease key, the records and the gateway
	// elections (daemon/gateway): one listing each, whatever the size.
	if r.ColdRequests["Range"] > 4 {
		t.Errorf("cold start made %g Range requests for 30 records", r.ColdRequests["Range"])
	}
	if len(r.SteadyMethods) != 0 {
		t.Errorf("steady state requests: %s, want none", fmtMethods(r.SteadyMethods))
	}
	if r.OpenStreams["LeaseKeepAlive"] != 1 || r.OpenStreams["Watch"] != 1 {
		t.Errorf("open streams %s, want LeaseKeepAlive=1 Watch=1", fmtMethods(r.OpenStreams))
	}
}
