// Package ipamconf parses the wgcni-ipam configuration: the network config
// a CNI runtime passes on stdin, whose "ipam" section selects wgcni-ipam.
// Errors are CNI errors with code 7 naming the field.
package ipamconf

import (
	"encoding/json"

	"github.com/containernetworking/cni/pkg/types"
	current "github.com/containernetworking/cni/pkg/types/100"
	"github.com/containernetworking/cni/pkg/version"

	"github.com/wgcni/wgcni/daemon/nodefile"
	"github.com/wgcni/wgcni/plugins/netconf"
)

// Type is the plugin's name in an "ipam" section.
const Type = "wgcni-ipam"

// Conf is what wgcni-ipam needs from the network config.
type Conf struct {
	CNIVersion string
	// Name is the network name; allocations live in <dataDir>/<name>.
	Name string
	// RunDir holds the node file: ipam.runDir, else the plugin's top-level
	// runDir, else /run/wgcni.
	RunDir string
	// DataDir overrides the node file's ipamDir when set (ipam.dataDir).
	DataDir string

	PrevResult          *current.Result
	ValidAttachments    []types.GCAttachment
	HasValidAttachments bool
}

// Parse decodes and validates data.
func Parse(data []byte) (*Conf, error) {
	f, err := netconf.DecodeFields(data, "network config")
	if err != nil {
		return nil, err
	}
	c := &Conf{RunDir: nodefile.DefaultRunDir}
	if _, err := f.String("cniVersion", "cniVersion", &c.CNIVersion); err != nil {
		return nil, err
	}
	if _, err := f.String("name", "name", &c.Name); err != nil {
		return nil, err
	}
	if c.Name == "" {
		return nil, netconf.Invalid("field name: missing network name")
	}
	if set, err := f.String("runDir", "runDir", &c.RunDir); err != nil {
		return nil, err
	} else if set {
		if err := netconf.CheckDir(c.RunDir, "runDir"); err != nil {
			return nil, err
		}
	}
	ipam, err := f.Object("ipam", "ipam")
	if err != nil {
		return nil, err
	}
	if ipam == nil {
		return nil, netconf.Invalid("field ipam: missing")
	}
	if set, err := ipam.String("runDir", "ipam.runDir", &c.RunDir); err != nil {
		return nil, err
	} else if set {
		if err := netconf.CheckDir(c.RunDir, "ipam.runDir"); err != nil {
			return nil, err
		}
	}
	if set, err := ipam.String("dataDir", "ipam.dataDir", &c.DataDir); err != nil {
		return nil, err
	} else if set {
		if err := netconf.CheckDir(c.DataDir, "ipam.dataDir"); err != nil {
			return nil, err
		}
	}

	if raw, ok := f["cni.dev/valid-attachments"]; ok && string(raw) != "null" {
		if err := json.Unmarshal(raw, &c.ValidAttachments); err != nil {
			return nil, netconf.Invalid("field cni.dev/valid-attachments: must be a list of {containerID, ifname}: %v", err)
		}
		for i, a := range c.ValidAttachments {
			if a.ContainerID == "" || a.IfName == "" {
				return nil, netconf.Invalid("field cni.dev/valid-attachments[%d]: containerID and ifname are required", i)
			}
		}
		c.HasValidAttachments = true
	}
	if raw, ok := f["prevResult"]; ok && string(raw) != "null" {
		v := c.CNIVersion
		if v == "" {
			v = "0.1.0"
		}
		res, err := version.NewResult(v, raw)
		if err != nil {
			return nil, netconf.Invalid("field prevResult: %v", err)
		}
		if c.PrevResult, err = current.NewResultFromResult(res); err != nil {
			return nil, netconf.Invalid("field prevResult: %v", err)
		}
	}
	return c, nil
}
