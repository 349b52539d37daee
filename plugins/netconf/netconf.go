// Package netconf parses and validates the wgcni plugin's network
// configuration (the JSON a runtime writes to the plugin's stdin). Every
// error is a CNI error with code 7 that names the offending field, and
// parsing has no side effects, so a bad config changes nothing on the host.
package netconf

import (
	"encoding/json"
	"path/filepath"
	"strings"

	"github.com/containernetworking/cni/pkg/types"
	current "github.com/containernetworking/cni/pkg/types/100"
	"github.com/containernetworking/cni/pkg/version"

	"github.com/wgcni/wgcni/daemon/nodefile"
)

// Limits for the mtu override: the kernel refuses veth MTUs below 68, and
// an IPv4 pod needs at least 576 to be useful; 65535 is the IP maximum.
const (
	MinMTU = 576
	MaxMTU = 65535
)

// NetConf is the wgcni plugin configuration.
type NetConf struct {
	CNIVersion string
	Name       string
	Type       string
	IPAMType   string
	DNS        types.DNS

	// RunDir is where wgcnid writes the node file (default /run/wgcni).
	RunDir string
	// IPMasq masquerades pod traffic leaving the cluster CIDR.
	IPMasq bool
	// HairpinMode lets a pod reach itself through a service address that
	// the bridge reflects back out of the port it came in on.
	HairpinMode bool
	// MTU overrides the node file's pod MTU when > 0.
	MTU int

	// PrevResult is the result of the previous plugin in a chain (CHECK,
	// DEL, chained ADD), converted to the current result type; nil if absent.
	PrevResult *current.Result
	// ValidAttachments is cni.dev/valid-attachments (GC only).
	ValidAttachments []types.GCAttachment
	// HasValidAttachments distinguishes an empty list (release everything)
	// from a missing key (a GC request that cannot be trusted).
	HasValidAttachments bool
}

// Parse decodes and validates data. The error is always a *types.Error.
func Parse(data []byte) (*NetConf, error) {
	f, err := DecodeFields(data, "network config")
	if err != nil {
		return nil, err
	}
	c := &NetConf{RunDir: nodefile.DefaultRunDir}
	if _, err := f.String("cniVersion", "cniVersion", &c.CNIVersion); err != nil {
		return nil, err
	}
	if _, err := f.String("name", "name", &c.Name); err != nil {
		return nil, err
	}
	if c.Name == "" {
		return nil, Invalid("field name: missing network name")
	}
	if _, err := f.String("type", "type", &c.Type); err != nil {
		return nil, err
	}
	if set, err := f.String("runDir", "runDir", &c.RunDir); err != nil {
		return nil, err
	} else if set {
		if err := CheckDir(c.RunDir, "runDir"); err != nil {
			return nil, err
		}
	}
	if err := f.Bool("ipMasq", "ipMasq", &c.IPMasq); err != nil {
		return nil, err
	}
	if err := f.Bool("hairpinMode", "hairpinMode", &c.HairpinMode); err != nil {
		return nil, err
	}
	if err := f.Int("mtu", "mtu", &c.MTU); err != nil {
		return nil, err
	}
	if c.MTU != 0 && (c.MTU < MinMTU || c.MTU > MaxMTU) {
		return nil, Invalid("field mtu: %d is out of range %d..%d (0 = from the node file)", c.MTU, MinMTU, MaxMTU)
	}

	ipam, err := f.Object("ipam", "ipam")
	if err != nil {
		return nil, err
	}
	if ipam == nil {
		return nil, Invalid("field ipam: missing (wgcni needs an IPAM plugin, e.g. {\"type\":\"wgcni-ipam\"})")
	}
	if _, err := ipam.String("type", "ipam.type", &c.IPAMType); err != nil {
		return nil, err
	}
	if c.IPAMType == "" || strings.ContainsAny(c.IPAMType, "/\x00") {
		return nil, Invalid("field ipam.type: %q is not a plugin name", c.IPAMType)
	}

	if raw, ok := f["dns"]; ok && !isNull(raw) {
		if err := json.Unmarshal(raw, &c.DNS); err != nil {
			return nil, Invalid("field dns: %v", err)
		}
	}

	if raw, ok := f["cni.dev/valid-attachments"]; ok && !isNull(raw) {
		if err := json.Unmarshal(raw, &c.ValidAttachments); err != nil {
			return nil, Invalid("field cni.dev/valid-attachments: must be a list of {containerID, ifname}: %v", err)
		}
		for i, a := range c.ValidAttachments {
			if a.ContainerID == "" || a.IfName == "" {
				return nil, Invalid("field cni.dev/valid-attachments[%d]: containerID and ifname are required", i)
			}
		}
		c.HasValidAttachments = true
	}

	if raw, ok := f["prevResult"]; ok && !isNull(raw) {
		pr, err := parsePrevResult(c.CNIVersion, raw)
		if err != nil {
			return nil, err
		}
		c.PrevResult = pr
	}
	return c, nil
}

func parsePrevResult(cniVersion string, raw json.RawMessage) (*current.Result, error) {
	if cniVersion == "" {
		cniVersion = "0.1.0"
	}
	var probe map[string]json.RawMessage
	if err := json.Unmarshal(raw, &probe); err != nil {
		return nil, Invalid("field prevResult: must be an object, got %s", kind(raw))
	}
	res, err := version.NewResult(cniVersion, raw)
	if err != nil {
		return nil, Invalid("field prevResult: %v", err)
	}
	cur, err := current.NewResultFromResult(res)
	if err != nil {
		return nil, Invalid("field prevResult: %v", err)
	}
	return cur, nil
}

// CheckDir validates a directory setting: absolute, clean enough to be
// used as is, no NUL bytes.
func CheckDir(dir, field string) error {
	if dir == "" {
		return Invalid("field %s: empty path", field)
	}
	if !filepath.IsAbs(dir) {
		return Invalid("field %s: %q is not an absolute path", field, dir)
	}
	if strings.ContainsRune(dir, 0) {
		return Invalid("field %s: path contains a NUL byte", field)
	}
	return nil
}
