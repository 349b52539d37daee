// Package samenode is wgcni's optional same-node encryption: every pod gets
// its own userspace WireGuard device (TUN in the pod's netns, UDP socket in
// the node's netns), peered only with one per-node hub device. The hub's
// AllowedIPs for a pod are exactly the pod's /32, so pod-to-pod traffic on
// one node goes pod wg -> hub -> pod wg and is never plain on the bridge or
// on the pods' veths. Cost is O(pods on the node): one peer per pod on the
// hub, one peer (the hub) per pod device.
//
// Parts: the registry (one file per pod in the run dir, public data only),
// the pod device host (a detached long-lived process serving a unix socket,
// hosting every pod device as a set of goroutines), the hub (a normal wgdev
// device owned by wgcnid) and the reconciler (wgcnid makes the hub's peers
// and /32 routes match the registry; GC of orphans).
package samenode

import (
	"encoding/json"
	"errors"
	"fmt"
	"net/netip"
	"os"
	"path/filepath"
	"sort"
	"strings"

	"github.com/wgcni/wgcni/daemon/nodefile"
	"github.com/wgcni/wgcni/daemon/wgdev"
)

// Pod is a pod's registration: only public data (never a private key). It
// is written by the plugin on ADD and removed on DEL/GC.
type Pod struct {
	// ID identifies the attachment; the plugin uses the host veth name
	// (deterministic from network, container ID and ifname).
	ID          string `json:"id"`
	Network     string `json:"network"`
	ContainerID string `json:"containerID"`
	IfName      string `json:"ifName"`
	Netns       string `json:"netns"`
	// IP is the pod's IPv4 address, IP6 its IPv6 address; a pod has one
	// or both (IPv4-only, IPv6-only, dual-stack). The hub peer's AllowedIPs
	// are exactly these as /32 and /128.
	IP  netip.Addr `json:"ip,omitzero"`
	IP6 netip.Addr `json:"ip6,omitzero"`
	// WGIfName is the pod's WireGuard interface inside its netns.
	WGIfName  string `json:"wgIfName"`
	PublicKey string `json:"publicKey"`
	// Port is the pod device's UDP port in the node netns (on loopback).
	Port int `json:"port"`
	// Mode is the WireGuard behind the pod device: "kernel" (a wireguard
	// link) or "userspace" (hosted by wgcnid samenode-host); empty in
	// registrations written before kernel pod devices means userspace.
	Mode wgdev.Mode `json:"mode,omitempty"`
	// MTU, PodCIDR and PodCIDR6 are the pod's route parameters as ADD set
	// them (route MTU towards other nodes, this node's PodCIDRs), so the
	// daemon re-creates exactly those routes; zero in older registrations
	// (the daemon then uses the node's own values).
	MTU      int          `json:"mtu,omitempty"`
	PodCIDR  netip.Prefix `json:"podCIDR,omitzero"`
	PodCIDR6 netip.Prefix `json:"podCIDR6,omitzero"`
}

// DeviceMode is the WireGuard behind p's device (userspace if unrecorded).
func (p *Pod) DeviceMode() wgdev.Mode {
	if p.Mode == wgdev.Kernel {
		return wgdev.Kernel
	}
	return wgdev.Userspace
}

// Addrs lists the pod's addresses, IPv4 first.
func (p *Pod) Addrs() []netip.Addr {
	var out []netip.Addr
	for _, a := range []netip.Addr{p.IP, p.IP6} {
		if a.IsValid() {
			out = append(out, a)
		}
	}
	return out
}

// Dir is where registrations live.
func Dir(runDir string) string { return filepath.Join(runDir, "samenode") }

func regPath(runDir, id string) string { return filepath.Join(Dir(runDir), id+".json") }

func validID(id string) error {
	if id == "" || len(id) > 64 || strings.ContainsAny(id, "/\\.\x00") {
		return fmt.Errorf("same-node registration id %q is not a plain name", id)
	}
	return nil
}

// Validate checks a registration read from disk.
func (p *Pod) Validate() error {
	if err := validID(p.ID); err != nil {
		return err
	}
	if p.IP.IsValid() && !p.IP.Is4() {
		return fmt.Errorf("same-node registration %s: field ip %q is not an IPv4 address", p.ID, p.IP)
	}
	if p.IP6.IsValid() && (!p.IP6.Is6() || p.IP6.Is4In6()) {
		return fmt.Errorf("same-node registration %s: field ip6 %q is not an IPv6 address", p.ID, p.IP6)
	}
	if !p.IP.IsValid() && !p.IP6.IsValid() {
		return fmt.Errorf("same-node registration %s: fields ip and ip6 are both empty", p.ID)
	}
	if p.PublicKey == "" {
		return fmt.Errorf("same-node registration %s: field publicKey is empty", p.ID)
	}
	if p.Port <= 0 || p.Port > 65535 {
		return fmt.Errorf("same-node registration %s: field port %d out of range", p.ID, p.Port)
	}
	switch p.Mode {
	case "", wgdev.Userspace, wgdev.Kernel:
	default:
		return fmt.Errorf("same-node registration %s: field mode %q is neither kernel nor userspace", p.ID, p.Mode)
	}
	if p.MTU < 0 || p.MTU > 65535 {
		return fmt.Errorf("same-node registration %s: field mtu %d out of range", p.ID, p.MTU)
	}
	if p.PodCIDR.IsValid() && !p.PodCIDR.Addr().Is4() {
		return fmt.Errorf("same-node registration %s: field podCIDR %s is not IPv4", p.ID, p.PodCIDR)
	}
	if p.PodCIDR6.IsValid() && (!p.PodCIDR6.Addr().Is6() || p.PodCIDR6.Addr().Is4In6()) {
		return fmt.Errorf("same-node registration %s: field podCIDR6 %s is not IPv6", p.ID, p.PodCIDR6)
	}
	if p.WGIfName == "" || len(p.WGIfName) > 15 || strings.ContainsAny(p.WGIfName, "/ \x00") {
		return fmt.Errorf("same-node registration %s: field wgIfName %q is not an interface name", p.ID, p.WGIfName)
	}
	return nil
}

// Register writes p atomically.
func Register(runDir string, p *Pod) error {
	if err := p.Validate(); err != nil {
		return err
	}
	if err := os.MkdirAll(Dir(runDir), 0o755); err != nil {
		return fmt.Errorf("create %s: %w", Dir(runDir), err)
	}
	b, _ := json.MarshalIndent(p, "", "  ")
	return nodefile.WriteFileAtomic(regPath(runDir, p.ID), append(b, '\n'), 0o644)
}

// Unregister removes the registration of id; a missing one is not an error.
func Unregister(runDir, id string) error {
	if err := validID(id); err != nil {
		return err
	}
	if err := os.Remove(regPath(runDir, id)); err != nil && !errors.Is(err, os.ErrNotExist) {
		return fmt.Errorf("remove same-node registration %s: %w", id, err)
	}
	return nil
}

// Load reads one registration; (nil, nil) when there is none.
func Load(runDir, id string) (*Pod, error) {
	if err := validID(id); err != nil {
		return nil, err
	}
	b, err := os.ReadFile(regPath(runDir, id))
	if errors.Is(err, os.ErrNotExist) {
		return nil, nil
	}
	if err != nil {
		return nil, err
	}
	var p Pod
	if err := json.Unmarshal(b, &p); err != nil {
		return nil, fmt.Errorf("decode same-node registration %s: %w", regPath(runDir, id), err)
	}
	if err := p.Validate(); err != nil {
		return nil, err
	}
	return &p, nil
}

// List returns every valid registration, sorted by ID, and one error per
// unreadable file (those are skipped, never fatal).
func List(runDir string) ([]*Pod, []error) {
	ents, err := os.ReadDir(Dir(runDir))
	if err != nil {
		if errors.Is(err, os.ErrNotExist) {
			return nil, nil
		}
		return nil, []error{err}
	}
	var out []*Pod
	var errs []error
	for _, e := range ents {
		id, ok := strings.CutSuffix(e.Name(), ".json")
		if !ok || strings.HasPrefix(e.Name(), ".") {
			continue
		}
		p, err := Load(runDir, id)
		if err != nil {
			errs = append(errs, err)
			continue
		}
		if p != nil {
			out = append(out, p)
		}
	}
	sort.Slice(out, func(i, j int) bool { return out[i].ID < out[j].ID })
	return out, errs
}
