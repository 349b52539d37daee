package samenode

import (
	"encoding/json"
	"fmt"
	"net"
	"path/filepath"
	"time"
)

// HostSocket is the pod device host's control socket in the run dir. It is
// root-only (0600): whoever can talk to it can create devices.
func HostSocket(runDir string) string { return filepath.Join(runDir, "samenode.sock") }

// HostPIDFile is the pod device host's pid file.
func HostPIDFile(runDir string) string { return filepath.Join(runDir, "samenode-host.pid") }

// Request is one call to the pod device host. Ops: "ping", "add", "del",
// "list", and "watch" (acknowledged, then held open until the host ends).
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

// Call sends req to the pod device host of runDir and returns its answer.
func Call(runDir string, req Request, timeout time.Duration) (*Response, error) {
	c, err := net.DialTimeout("unix", HostSocket(runDir), timeout)
	if err != nil {
		return nil, fmt.Errorf("same-node pod device host (%s) unreachable; is wgcnid running with same-node encryption? %w", HostSocket(runDir), err)
	}
	defer c.Close()
	c.SetDeadline(time.Now().Add(timeout))
	if err := json.NewEncoder(c).Encode(req); err != nil {
		return nil, fmt.Errorf("same-node pod device host: send %s: %w", req.Op, err)
	}
	var resp Response
	if err := json.NewDecoder(c).Decode(&resp); err != nil {
		return nil, fmt.Errorf("same-node pod device host: read answer to %s: %w", req.Op, err)
	}
	if resp.Error != "" {
		return &resp, fmt.Errorf("same-node pod device host: %s %s: %s", req.Op, req.ID, resp.Error)
	}
	return &resp, nil
}
