// Package poddevices is the pod device process of same-node encryption:
// `wgcnid samenode-host`, one detached long-lived process (started by
// helperproc, so it outlives daemon restarts) that carries the userspace
// WireGuard device of every pod on the node as a set of goroutines, and
// the protocol over its root-only unix socket: JSON requests "ping",
// "add", "del", "list" and "watch" (Call, Watch). Kernel pod devices are
// not here (attach makes them).
package poddevices

import (
	"encoding/json"
	"fmt"
	"net"
	"path/filepath"
	"time"
)

// Socket is the pod device process's control socket in the run dir. It
// is root-only (0600): whoever can talk to it can create devices.
func Socket(runDir string) string { return filepath.Join(runDir, "samenode.sock") }

// PIDFile is the pod device process's pid file.
func PIDFile(runDir string) string { return filepath.Join(runDir, "samenode-host.pid") }

// Subcommand is the wgcnid subcommand that runs the process (Serve). The
// name is kept from earlier versions: a running node's process, started
// by the daemon before an upgrade, is recognised (and adopted) by it.
const Subcommand = "samenode-host"

// CallTimeout bounds one call to the pod device process.
const CallTimeout = 10 * time.Second

// Request is one call to the pod device process. Ops: "ping", "add", "del",
// "list", and "watch" (acknowledged, then held open until the process
// ends).
type Request struct {
	Op     string `json:"op"`
	ID     string `json:"id,omitempty"`
	Netns  string `json:"netns,omitempty"`
	IfName string `json:"ifName,omitempty"`
	MTU    int    `json:"mtu,omitempty"`
	// HubKey and HubPort: the pod device's only peer (on 127.0.0.1).
	HubKey  string `json:"hubKey,omitempty"`
	HubPort int    `json:"hubPort,omitempty"`
}

// Response answers a Request. Only public data crosses the socket.
type Response struct {
	Error     string   `json:"error,omitempty"`
	PublicKey string   `json:"publicKey,omitempty"`
	Port      int      `json:"port,omitempty"`
	IDs       []string `json:"ids,omitempty"`
}

// Call sends req to the pod device process of runDir and returns its
// answer.
func Call(runDir string, req Request, timeout time.Duration) (*Response, error) {
	c, err := net.DialTimeout("unix", Socket(runDir), timeout)
	if err != nil {
		return nil, fmt.Errorf("same-node pod device process (%s) unreachable; is wgcnid running with same-node encryption? %w", Socket(runDir), err)
	}
	defer c.Close()
	c.SetDeadline(time.Now().Add(timeout))
	if err := json.NewEncoder(c).Encode(req); err != nil {
		return nil, fmt.Errorf("same-node pod device process: send %s: %w", req.Op, err)
	}
	var resp Response
	if err := json.NewDecoder(c).Decode(&resp); err != nil {
		return nil, fmt.Errorf("same-node pod device process: read answer to %s: %w", req.Op, err)
	}
	if resp.Error != "" {
		return &resp, fmt.Errorf("same-node pod device process: %s %s: %s", req.Op, req.ID, resp.Error)
	}
	return &resp, nil
}
