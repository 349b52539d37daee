// Package registry is same-node encryption's record of pods: one file per
// pod attachment in <run-dir>/samenode, public data only (never a private
// key), written by the plugin on ADD and removed on DEL/GC, read by the
// daemon's reconciler; and the lock that serialises every change to
// registrations, hub peers and pod devices (lock.go).
package registry

import (
	"encoding/json"
	"errors"
	"fmt"
	"net/netip"
	"os"
	"path/filepath"
	"slices"
	"sort"
	"strings"

	"github.com/wgcni/wgcni/daemon/nodefile"
	"github.com/wgcni/wgcni/daemon/wgdev"
)

// Pod is a pod's registration.
type Pod struct {
	// ID identifies the attachment; the plugin uses the host veth name
	// (deterministic from network, container ID and ifname).
	ID          string `json:"id"`
	Network     string `json:"network"`
	ContainerID string `json:"containerID"`
	IfName      string `json:"ifName"`
	Netns       string `json:"netns"`
	// IPs are the pod's addresses, at most one per family, IPv4 first
	// (IPv4-only, IPv6-only, dual-stack). The hub peer's AllowedIPs are
	// exactly these as host prefixes (/32, /128).
	IPs []netip.Addr `json:"ips"`
	// WGIfName is the pod's WireGuard interface inside its netns.
	WGIfName  string `json:"wgIfName"`
	PublicKey string `json:"publicKey"`
	// Port is the pod device's UDP port in the node netns (on loopback).
	Port int `json:"port"`
	// Mode is the WireGuard behind the pod device: "kernel" (a wireguard
	// link) or "userspace" (in the pod device process); empty in
	// registrations written before kernel pod devices means userspace.
	Mode wgdev.Mode `json:"mode,omitempty"`
	// MTU and PodCIDRs are the pod's route parameters as ADD set them
	// (route MTU towards other nodes, this node's PodCIDR of each family),
	// so the daemon re-creates exactly those routes; empty in older
	// registrations (the daemon then uses the node's own values).
	MTU      int            `json:"mtu,omitempty"`
	PodCIDRs []netip.Prefix `json:"podCIDRs,omitempty"`
}

// UnmarshalJSON reads the current format and also the per-family fields of
// registrations written before the address lists ("ip", "ip6", "podCIDR",
// "podCIDR6": one address and PodCIDR per family), into the lists: a node
// upgraded in place keeps its pods. A legacy field that does not parse is
// an error naming it.
func (p *Pod) UnmarshalJSON(b []byte) error {
	type plain Pod
	if err := json.Unmarshal(b, (*plain)(p)); err != nil {
		return err
	}
	var raw map[string]json.RawMessage
	if err := json.Unmarshal(b, &raw); err != nil {
		return err
	}
	var err error
	if p.IPs, err = appendLegacy(raw, []string{"ip", "ip6"}, p.IPs, netip.Addr.IsValid); err != nil {
		return err
	}
	p.PodCIDRs, err = appendLegacy(raw, []string{"podCIDR", "podCIDR6"}, p.PodCIDRs, netip.Prefix.IsValid)
	return err
}

// appendLegacy appends the values of the given legacy fields of raw that
// are present and valid to out.
func appendLegacy[T any](raw map[string]json.RawMessage, fields []string, out []T, valid func(T) bool) ([]T, error) {
	for _, f := range fields {
		v, ok := raw[f]
		if !ok {
			continue
		}
		var x T
		if err := json.Unmarshal(v, &x); err != nil {
			return nil, fmt.Errorf("field %s: %w", f, err)
		}
		if valid(x) {
			out = append(out, x)
		}
	}
	return out, nil
}

// DeviceMode is the WireGuard behind p's device (userspace if unrecorded).
func (p *Pod) DeviceMode() wgdev.Mode {
	if p.Mode == wgdev.Kernel {
		return wgdev.Kernel
	}
	return wgdev.Userspace
}

// PodCIDR is the recorded PodCIDR of a's family, if any.
func (p *Pod) PodCIDR(a netip.Addr) (netip.Prefix, bool) {
	for _, c := range p.PodCIDRs {
		if c.Addr().Is4() == a.Is4() {
			return c, true
		}
	}
	return netip.Prefix{}, false
}

// Normalize orders p's lists IPv4 first (the order they are written and
// compared in); an empty list is nil (written as absent).
func (p *Pod) Normalize() {
	if len(p.PodCIDRs) == 0 {
		p.PodCIDRs = nil
	}
	slices.SortFunc(p.IPs, netip.Addr.Compare)
	slices.SortFunc(p.PodCIDRs, func(a, b netip.Prefix) int { return a.Addr().Compare(b.Addr()) })
}

// Dir is where registrations live.
func Dir(runDir string) string { return filepath.Join(runDir, "samenode") }

func regPath(runDir, id string) string { return filepath.Join(Dir(runDir), id+".json") }

// ValidID checks that id is a plain name (it becomes a file name).
func ValidID(id string) error {
	if id == "" || len(id) > 64 || strings.ContainsAny(id, "/\\.\x00") {
		return fmt.Errorf("same-node registration id %q is not a plain name", id)
	}
	return nil
}

// Validate checks a registration.
func (p *Pod) Validate() error {
	if err := ValidID(p.ID); err != nil {
		return err
	}
	if len(p.IPs) == 0 {
		return fmt.Errorf("same-node registration %s: field ips is empty", p.ID)
	}
	if err := onePerFamily(p.IPs, func(a netip.Addr) netip.Addr { return a }); err != nil {
		return fmt.Errorf("same-node registration %s: field ips: %w", p.ID, err)
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
	if err := onePerFamily(p.PodCIDRs, netip.Prefix.Addr); err != nil {
		return fmt.Errorf("same-node registration %s: field podCIDRs: %w", p.ID, err)
	}
	if p.WGIfName == "" || len(p.WGIfName) > 15 || strings.ContainsAny(p.WGIfName, "/ \x00") {
		return fmt.Errorf("same-node registration %s: field wgIfName %q is not an interface name", p.ID, p.WGIfName)
	}
	return nil
}

// onePerFamily checks that every element is a valid address (no IPv4
// mapped into IPv6) and that no family appears twice.
func onePerFamily[T fmt.Stringer](xs []T, addr func(T) netip.Addr) error {
	seen := map[bool]T{}
	for _, x := range xs {
		a := addr(x)
		if !a.IsValid() || a.Is4In6() || a.Zone() != "" {
			return fmt.Errorf("%s is not a plain IPv4 or IPv6 address", x)
		}
		if prev, ok := seen[a.Is4()]; ok {
			return fmt.Errorf("%s and %s are of the same family", prev, x)
		}
		seen[a.Is4()] = x
	}
	return nil
}

// Register writes p atomically (lists normalised first).
func Register(runDir string, p *Pod) error {
	p.Normalize()
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
	if err := ValidID(id); err != nil {
		return err
	}
	if err := os.Remove(regPath(runDir, id)); err != nil && !errors.Is(err, os.ErrNotExist) {
		return fmt.Errorf("remove same-node registration %s: %w", id, err)
	}
	return nil
}

// Load reads one registration; (nil, nil) when there is none.
func Load(runDir, id string) (*Pod, error) {
	if err := ValidID(id); err != nil {
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
	p.Normalize()
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
