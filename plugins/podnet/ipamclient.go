package podnet

import (
	"context"
	"log/slog"

	"github.com/containernetworking/cni/pkg/invoke"
	"github.com/containernetworking/cni/pkg/skel"
	"github.com/containernetworking/cni/pkg/types"
	"github.com/containernetworking/plugins/pkg/ipam"

	"github.com/wgcni/wgcni/ipam/ipamconf"
	"github.com/wgcni/wgcni/ipam/nodeipam"
)

// ipamClient runs the configured IPAM plugin's commands for one call.
type ipamClient interface {
	Add() (types.Result, error)
	Del() error
	Check() error
	Status() error
	GC() error
}

// newIPAM picks how to reach the IPAM plugin. wgcni-ipam's code is linked
// into wgcni and runs in-process: same allocator, same on-disk store and
// file lock as the wgcni-ipam binary (so both can be used side by side),
// minus one process start per ADD and DEL, the largest single cost of a
// CNI call after the kernel's own work. Any other IPAM type is executed
// from CNI_PATH as the spec describes.
func newIPAM(typ string, args *skel.CmdArgs, log *slog.Logger) (ipamClient, error) {
	if typ != ipamconf.Type {
		return execIPAM{typ: typ, stdin: args.StdinData}, nil
	}
	conf, err := ipamconf.Parse(args.StdinData)
	if err != nil {
		return nil, err
	}
	return inProcessIPAM{conf: conf, containerID: args.ContainerID, ifName: args.IfName, log: log}, nil
}

type execIPAM struct {
	typ   string
	stdin []byte
}

func (e execIPAM) Add() (types.Result, error) { return ipam.ExecAdd(e.typ, e.stdin) }
func (e execIPAM) Del() error                 { return ipam.ExecDel(e.typ, e.stdin) }
func (e execIPAM) Check() error               { return ipam.ExecCheck(e.typ, e.stdin) }
func (e execIPAM) Status() error              { return ipam.ExecStatus(e.typ, e.stdin) }
func (e execIPAM) GC() error {
	return invoke.DelegateGC(context.TODO(), e.typ, e.stdin, nil)
}

type inProcessIPAM struct {
	conf                *ipamconf.Conf
	containerID, ifName string
	log                 *slog.Logger
}

func (i inProcessIPAM) Add() (types.Result, error) {
	r, err := nodeipam.Allocate(i.conf, i.containerID, i.ifName)
	if err != nil {
		return nil, err
	}
	return r, nil
}
func (i inProcessIPAM) Del() error    { return nodeipam.Release(i.conf, i.containerID, i.ifName) }
func (i inProcessIPAM) Check() error  { return nodeipam.Verify(i.conf, i.containerID, i.ifName) }
func (i inProcessIPAM) Status() error { return nodeipam.Ready(i.conf) }
func (i inProcessIPAM) GC() error     { return nodeipam.Collect(i.conf, i.log) }
