package pq

import (
	"testing"
	"time"

	"github.com/wgcni/wgcni/daemon/agent"
	"github.com/wgcni/wgcni/tests/harness"
)

// TestHostOnlyPeerGetsPSK: a host-only peer (wgcnid --host-only) runs the
// same exchanges as a node: both hold the same PSK, it rotates, and the
// host reaches a pod.
func TestHostOnlyPeerGetsPSK(t *testing.T) {
	c := start(t, 1, pqArgs("on")...)
	n1 := c.Nodes()[0]
	pod := n1.MustAddPod(t)
	h, err := c.AddBareNode()
	if err != nil {
		t.Fatal(err)
	}
	h.ExtraArgs = []string{"--host-only", "--host-cidr", "10.244.200.0/24"}
	if err := h.StartDaemon(); err != nil {
		t.Fatal(err)
	}
	err = harness.WaitFor(30*time.Second, "host file of "+h.Name, func() (bool, error) {
		_, err := agent.ReadHostPeerFile(h.RunDir)
		return err == nil, nil
	})
	if err != nil {
		t.Fatal(err)
	}
	first := sharedPSK(t, n1, h, 30*time.Second)
	harness.Connect(t, h.NS, pod.IP, h.Name+" -> "+pod.Name, 3)
	var next [32]byte
	err = harness.WaitFor(4*interval, "a rotated PSK", func() (bool, error) {
		next = sharedPSK(t, n1, h, interval)
		return next != first, nil
	})
	if err != nil {
		t.Fatal(err)
	}
	harness.Result(t, "host-only peer and node share a PSK, it rotates, the host reaches a pod")
}
