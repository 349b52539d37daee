// Command wgcni is the wgcni CNI plugin: it connects a pod to this node's
// bridge. All logic lives in package podnet.
package main

import (
	"log/slog"
	"os"

	"github.com/containernetworking/cni/pkg/skel"
	"github.com/containernetworking/cni/pkg/version"

	"github.com/wgcni/wgcni/daemon/buildinfo"
	"github.com/wgcni/wgcni/plugins/podnet"
)

func main() {
	if buildinfo.PluginCommandLine("wgcni", "pods on the node bridge of an encrypted WireGuard network", os.Args[1:], os.Stdout) {
		return
	}
	// stdout carries the CNI result; logs go to stderr, which runtimes keep.
	p := &podnet.Plugin{Log: slog.New(slog.NewTextHandler(os.Stderr, &slog.HandlerOptions{Level: slog.LevelInfo}))}
	skel.PluginMainFuncs(skel.CNIFuncs{
		Add:    p.Add,
		Del:    p.Del,
		Check:  p.Check,
		Status: p.Status,
		GC:     p.GC,
	}, version.All, "wgcni CNI plugin: pods on the node bridge of an encrypted WireGuard network")
}
