package main

import (
	"bytes"
	"regexp"
	"testing"
	"time"

	"github.com/wgcni/wgcni/tests/harness"
)

// TestSmoke runs one short sample of wgcni pod->pod, of the wgref pair
// and of the wgref pair with hand-wired pods (pods.go) so `make test`
// proves the benchmark works (make bench runs it in full); it checks that
// traffic flowed and that wgcni's TUN has its offloads on.
// No throughput target is asserted: the machine is shared.
func TestSmoke(t *testing.T) {
	harness.Require(t)
	res, err := Run(1500, Options{Dur: time.Second, Rounds: 1, Streams: []int{1},
		Only: regexp.MustCompile(`^(wgcni pod->pod|wgref node->node|wgref pod->pod)$`), Logf: t.Logf})
	var out bytes.Buffer
	Print(&out, []Result{res})
	t.Log("\n" + out.String())
	if err != nil {
		t.Fatal(err)
	}
	for _, k := range []string{"wgcni pod->pod/1", "wgref node->node/1", "wgref pod->pod/1"} {
		if s := res.Samples[k]; len(s) != 1 || s[0] <= 0 {
			t.Errorf("%s: samples %v", k, s)
		}
	}
	if res.PodMTU != 1440 {
		t.Errorf("pod MTU %d at underlay 1500, want 1440", res.PodMTU)
	}
	for _, f := range []string{"tx-tcp-segmentation=on", "generic-receive-offload=on"} {
		if !bytes.Contains([]byte(res.Offloads), []byte(f)) && !bytes.Contains([]byte(res.Offloads), []byte("unavailable")) {
			t.Errorf("wgcni TUN offloads %q: want %s", res.Offloads, f)
		}
	}
}
