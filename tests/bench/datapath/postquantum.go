package main

import (
	"fmt"
	"time"

	"golang.zx2c4.com/wireguard/wgctrl/wgtypes"

	"github.com/wgcni/wgcni/tests/harness"
)

// pqPair adds two wgcni nodes with --post-quantum=on and a pod on each,
// and waits until each node's device holds a preshared key for the
// other (read through wgctrl; the key itself is never printed).
func pqPair(c *harness.Cluster) (Case, error) {
	var nodes [2]*harness.Node
	var pods [2]*harness.Pod
	for i := range nodes {
		n, err := c.AddNode("--post-quantum", "on")
		if err != nil {
			return Case{}, fmt.Errorf("post-quantum node: %w", err)
		}
		p, err := n.AddPod()
		if err != nil {
			return Case{}, err
		}
		nodes[i], pods[i] = n, p
	}
	for i, n := range nodes {
		od, err := nodes[1-i].WGDevice()
		if err != nil {
			return Case{}, err
		}
		other := od.PublicKey
		err = harness.WaitFor(60*time.Second, "a preshared key on "+n.Name, func() (bool, error) {
			psk, _, err := n.PresharedKey(other)
			return psk != (wgtypes.Key{}), err
		})
		if err != nil {
			return Case{}, err
		}
	}
	if err := harness.WaitFor(30*time.Second, "post-quantum pod to pod ping", func() (bool, error) {
		r, err := pods[0].Ping(pods[1].IP, 1, 200*time.Millisecond)
		return err == nil && r.Received == 1, nil
	}); err != nil {
		return Case{}, err
	}
	var pids []int
	for _, n := range nodes {
		pid, err := readPID(n.RunDir + "/" + n.Device + ".pid")
		if err != nil {
			return Case{}, err
		}
		pids = append(pids, pid)
	}
	return Case{Name: "wgcni pod->pod post-quantum", Client: pods[0].NS, Server: pods[1].NS, Addr: pods[1].IP, PIDs: pids}, nil
}
