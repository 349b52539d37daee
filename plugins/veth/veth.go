// Package veth creates, finds and removes the veth pairs that connect pods
// to the node bridge.
//
// The host end is named from (network, containerID, ifname) in the netlink
// request that creates the pair and puts the peer into the pod's namespace,
// and tagged with the attachment (its alias) right after, before it joins
// the bridge. A plugin killed at any point therefore leaves nothing, or a
// pair DEL finds by name and GC finds by tag (or, in the one-request window
// before the tag, by its name pattern).
package veth

import (
	"crypto/rand"
	"crypto/sha256"
	"encoding/hex"
	"errors"
	"fmt"
	"net"
	"strings"
	"syscall"

	"github.com/containernetworking/plugins/pkg/ns"
	"github.com/vishvananda/netlink"
)

// HostPrefix starts every host-side veth name wgcni creates.
const HostPrefix = "wgv"

// aliasPrefix starts the IFLA_IFALIAS tag on host-side veths:
// "wgcni/<network>/<ifname>/<containerID>". Network names, interface names
// and container IDs cannot contain '/', so the tag splits unambiguously.
const aliasPrefix = "wgcni/"

// maxAlias is IFALIASZ-1: the kernel refuses longer aliases.
const maxAlias = 255

// Attachment identifies one pod interface, as CNI does.
type Attachment struct {
	Network     string
	ContainerID string
	IfName      string
}

// HostName is the deterministic host-side name of the attachment's veth,
// so DEL finds it without any saved state.
func HostName(a Attachment) string {
	sum := sha256.Sum256([]byte(a.Network + "\x00" + a.ContainerID + "\x00" + a.IfName))
	return HostPrefix + hex.EncodeToString(sum[:6])
}

// Alias is the tag recorded on the host-side veth.
func Alias(a Attachment) string {
	return aliasPrefix + a.Network + "/" + a.IfName + "/" + a.ContainerID
}

// ParseAlias reverses Alias; ok is false for links wgcni did not tag.
func ParseAlias(alias string) (a Attachment, ok bool) {
	rest, found := strings.CutPrefix(alias, aliasPrefix)
	if !found {
		return Attachment{}, false
	}
	parts := strings.SplitN(rest, "/", 3)
	if len(parts) != 3 || parts[0] == "" || parts[1] == "" || parts[2] == "" {
		return Attachment{}, false
	}
	return Attachment{Network: parts[0], IfName: parts[1], ContainerID: parts[2]}, true
}

// Pair describes a created veth pair.
type Pair struct {
	HostName  string
	HostIndex int
}

// ErrExists means the attachment's host veth already exists: the runtime
// called ADD twice without DEL, and the existing pair is left alone.
var ErrExists = errors.New("veth for this attachment already exists")

// Create makes the pair in the current (host) namespace, host end up, tagged
// and attached to bridgeIndex, the pod end called a.IfName with the given
// MTU inside podNS. The pod end is left down; the caller configures it.
// The MACs are chosen by the caller so the result can report them without
// another lookup in each namespace.
func Create(a Attachment, podNS ns.NetNS, bridgeIndex, mtu int, hairpin bool, hostMAC, podMAC net.HardwareAddr) (*Pair, error) {
	alias := Alias(a)
	if len(alias) > maxAlias {
		return nil, fmt.Errorf("attachment tag %q is longer than %d bytes (network name or container ID too long)", alias, maxAlias)
	}
	name := HostName(a)
	la := netlink.NewLinkAttrs()
	la.Name = name
	la.Alias = alias
	la.MTU = mtu
	la.Flags = net.FlagUp
	la.HardwareAddr = hostMAC
	link := &netlink.Veth{
		LinkAttrs:        la,
		PeerName:         a.IfName,
		PeerNamespace:    netlink.NsFd(int(podNS.Fd())),
		PeerMTU:          uint32(mtu),
		PeerHardwareAddr: podMAC,
	}
	if err := netlink.LinkAdd(link); err != nil {
		if errors.Is(err, syscall.EEXIST) {
			if _, lerr := netlink.LinkByName(name); lerr == nil {
				return nil, fmt.Errorf("create veth %s for %s/%s: %w", name, a.ContainerID, a.IfName, ErrExists)
			}
			return nil, fmt.Errorf("create veth %s: interface %q already exists in netns %s", name, a.IfName, podNS.Path())
		}
		return nil, fmt.Errorf("create veth %s (pod side %s): %w", name, a.IfName, err)
	}
	// The kernel ignores IFLA_IFALIAS on create, so the tag is a second
	// request; it comes before the bridge so no untagged port ever forwards.
	if err := netlink.LinkSetAlias(link, alias); err != nil {
		_ = DeleteHost(name)
		return nil, fmt.Errorf("tag veth %s: %w", name, err)
	}
	if err := netlink.LinkSetMasterByIndex(link, bridgeIndex); err != nil {
		_ = DeleteHost(name)
		return nil, fmt.Errorf("attach veth %s to bridge: %w", name, err)
	}
	if hairpin {
		if err := netlink.LinkSetHairpin(link, true); err != nil {
			_ = DeleteHost(name)
			return nil, fmt.Errorf("set hairpin mode on %s: %w", name, err)
		}
	}
	return &Pair{HostName: name, HostIndex: link.Attrs().Index}, nil
}

// DeleteHost removes the pair by its host-side name (the peer goes with
// it). A missing link is not an error: DEL must be idempotent.
func DeleteHost(name string) error {
	_, err := DeleteInNS(name)
	return err
}

// DeleteInNS removes the link ifName from the current namespace; for a
// veth its peer goes with it. Missing is not an error; deleted says
// whether there was a link to delete.
func DeleteInNS(ifName string) (deleted bool, err error) {
	l, err := netlink.LinkByName(ifName)
	if err != nil {
		var nf netlink.LinkNotFoundError
		if errors.As(err, &nf) {
			return false, nil
		}
		return false, fmt.Errorf("look up %s: %w", ifName, err)
	}
	if err := netlink.LinkDel(l); err != nil {
		if isNotFound(err) {
			return false, nil
		}
		return false, fmt.Errorf("delete %s: %w", ifName, err)
	}
	return true, nil
}

// Owned lists the host veths in the current namespace that wgcni created
// for network: tagged ones keyed by name with their attachment, and
// untagged ones carrying wgcni's name pattern (an ADD interrupted between
// creating and tagging the pair) in untagged.
func Owned(network string) (tagged map[string]Attachment, untagged []string, err error) {
	links, err := netlink.LinkList()
	if err != nil {
		return nil, nil, fmt.Errorf("list links: %w", err)
	}
	tagged = map[string]Attachment{}
	for _, l := range links {
		if l.Type() != "veth" {
			continue
		}
		name, alias := l.Attrs().Name, l.Attrs().Alias
		if a, ok := ParseAlias(alias); ok {
			if a.Network == network {
				tagged[name] = a
			}
			continue
		}
		if alias == "" && IsHostName(name) {
			untagged = append(untagged, name)
		}
	}
	return tagged, untagged, nil
}

// IsHostName reports whether name has the form HostName produces.
func IsHostName(name string) bool {
	rest, ok := strings.CutPrefix(name, HostPrefix)
	if !ok || len(rest) != 12 {
		return false
	}
	_, err := hex.DecodeString(rest)
	return err == nil
}

func isNotFound(err error) bool {
	var nf netlink.LinkNotFoundError
	return errors.As(err, &nf) || errors.Is(err, syscall.ENODEV) || errors.Is(err, syscall.ENOENT)
}

// RandomMAC returns a random locally administered unicast MAC, what the
// kernel would pick itself.
func RandomMAC() net.HardwareAddr {
	mac := make(net.HardwareAddr, 6)
	if _, err := rand.Read(mac); err != nil {
		panic(err) // crypto/rand never fails on Linux
	}
	mac[0] = (mac[0] &^ 0x01) | 0x02
	return mac
}
