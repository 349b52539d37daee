// Command wgcni-ipam is the wgcni IPAM plugin: pod addresses out of this
// node's PodCIDR. All logic lives in package nodeipam.
package main

import (
	"log/slog"
	"os"

	"github.com/containernetworking/cni/pkg/skel"
	"github.com/containernetworking/cni/pkg/version"

	"github.com/wgcni/wgcni/daemon/buildinfo"
	"github.com/wgcni/wgcni/ipam/nodeipam"
)

func main() {
	if buildinfo.PluginCommandLine("wgcni-ipam", "pod addresses out of this node's PodCIDR", os.Args[1:], os.Stdout) {
		return
	}
	m := &nodeipam.IPAM{Log: slog.New(slog.NewTextHandler(os.Stderr, nil))}
	skel.PluginMainFuncs(skel.CNIFuncs{
		Add:    m.Add,
		Del:    m.Del,
		Check:  m.Check,
		Status: m.Status,
		GC:     m.GC,
	}, version.All, "wgcni-ipam: pod addresses out of this node's PodCIDR")
}
