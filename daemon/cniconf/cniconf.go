// Package cniconf installs the node's CNI network configuration list for
// the container runtime. The runtime reports the node's network as ready
// (and Kubernetes turns the node Ready and schedules pods to it) as soon
// as a conflist appears in its config directory, so wgcnid writes it only
// once the node holds its PodCIDR lease and the plugins' node file
// exists: before that every CNI ADD could only fail.
package cniconf

import (
	"bytes"
	"fmt"
	"os"
	"path/filepath"

	"github.com/containernetworking/cni/libcni"

	"github.com/wgcni/wgcni/daemon/nodefile"
)

// Install copies the conflist src into dir under the same base name,
// atomically (libcni ignores the dot-named temporary file), unless dir
// already holds the same bytes. It reports whether it wrote. src must
// parse as a conflist the way the runtime parses it.
func Install(src, dir string) (bool, error) {
	data, err := os.ReadFile(src)
	if err != nil {
		return false, fmt.Errorf("read CNI conflist: %w", err)
	}
	list, err := libcni.NetworkConfFromBytes(data)
	if err != nil {
		return false, fmt.Errorf("CNI conflist %s: %w", src, err)
	}
	if len(list.Plugins) == 0 {
		return false, fmt.Errorf("CNI conflist %s: no plugins", src)
	}
	dst := filepath.Join(dir, filepath.Base(src))
	if cur, err := os.ReadFile(dst); err == nil && bytes.Equal(cur, data) {
		return false, nil
	}
	if err := os.MkdirAll(dir, 0o755); err != nil {
		return false, fmt.Errorf("CNI config dir: %w", err)
	}
	if err := nodefile.WriteFileAtomic(dst, data, 0o644); err != nil {
		return false, err
	}
	return true, nil
}
