package lab

import (
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
)

// Images the lab builds and every worker imports.
const (
	// WgcniImage is the image conf/kubernetes/20-daemonset.yaml runs.
	WgcniImage = "ghcr.io/wgcni/wgcni:v0.1.0"
	// ToolboxImage is busybox: sh, ping, nc, wget, httpd, nslookup. The name
	// is fully qualified: the CRI would make docker.io/ of a short one.
	ToolboxImage = "localhost/wgcni-lab/toolbox:1"
	// AgnhostImage is the name Kubernetes' e2e tests v1.34 run agnhost as.
	AgnhostImage = "registry.k8s.io/e2e-test-images/agnhost:2.56"
	// EtcdImage is the image conf/kubernetes/15-etcd.yaml runs (wgcni's
	// own etcd); the lab's holds Debian's etcd (3.4) at the path of the
	// registry's image, /usr/local/bin/etcd.
	EtcdImage = "registry.k8s.io/etcd:3.5.21-0"
	// CoreDNSImage is the image kubeadm's CoreDNS Deployment runs.
	CoreDNSImage = "registry.k8s.io/coredns/coredns:v1.15.0"
)

// ImageBinaries are the static binaries of wgcni's image, in
// bin/kube/image (make kube-build builds them the way
// conf/kubernetes/Dockerfile does).
var ImageBinaries = []string{"wgcnid", "wgcnictl", "wgcni", "wgcni-ipam", "portmap"}

// wgcniImage is conf/kubernetes/Dockerfile's image: busybox with the
// binaries in /opt/wgcni/bin, wgcnid as the entrypoint.
func (l *Lab) wgcniImage() (*Image, error) {
	im := &Image{Name: WgcniImage, Entrypoint: []string{"/opt/wgcni/bin/wgcnid"}, Files: map[string]string{}}
	if err := im.AddBusybox(); err != nil {
		return nil, err
	}
	for _, b := range ImageBinaries {
		im.Files["/opt/wgcni/bin/"+b] = filepath.Join(l.Bin, "image", b)
	}
	return im, nil
}

// withLibc adds the machine's C library and its loader to an image's
// files (for Debian's dynamically linked etcd and dash) and returns them.
func withLibc(files map[string]string) map[string]string {
	for _, f := range []string{"/lib64/ld-linux-x86-64.so.2", "/lib/x86_64-linux-gnu/libc.so.6"} {
		files[f] = f
	}
	return files
}

// buildImages writes the lab's images as OCI tarballs into the run dir.
func (l *Lab) buildImages() error {
	dir := filepath.Join(l.C.Dir, "images")
	if err := os.MkdirAll(dir, 0o755); err != nil {
		return err
	}
	wg, err := l.wgcniImage()
	if err != nil {
		return err
	}
	toolbox := &Image{Name: ToolboxImage, Cmd: []string{"sleep", "86400"}}
	if err := toolbox.AddBusybox(); err != nil {
		return err
	}
	etcd, err := exec.LookPath("etcd")
	if err != nil {
		return fmt.Errorf("etcd (Debian's etcd-server) for the etcd image: %w", err)
	}
	images := []*Image{
		{Name: PauseImage, Entrypoint: []string{"/pause"}, Files: map[string]string{"/pause": l.bin("pause")}},
		{Name: CoreDNSImage, Entrypoint: []string{"/coredns"}, Files: map[string]string{"/coredns": l.bin("coredns")}},
		// Debian's etcd links the C library: ship it and its loader.
		{Name: EtcdImage, Entrypoint: []string{"/usr/local/bin/etcd"}, Files: withLibc(map[string]string{"/usr/local/bin/etcd": etcd})},
		wg, toolbox,
	}
	// agnhost (test/images/agnhost) with what the e2e checks exec in it:
	// a shell from busybox, a curl and a UDP-capable nc
	// (tests/kube/images/curl, nc: before busybox's on PATH).
	// Optional: only `make kube-e2e` builds it.
	if _, err := os.Stat(l.bin("agnhost")); err == nil {
		ag := &Image{Name: AgnhostImage, Entrypoint: []string{"/agnhost"}, Cmd: []string{"pause"},
			Files: map[string]string{"/agnhost": l.bin("agnhost"), "/usr/bin/curl": l.bin("curl"), "/usr/bin/nc": l.bin("nc")}}
		if err := ag.AddBusybox(); err != nil {
			return err
		}
		// Debian's busybox sh runs its own applets before PATH (its nc
		// has no UDP), so the shell the e2e checks exec is dash, with
		// the C library it links.
		delete(ag.Links, "/bin/sh")
		ag.Files["/bin/sh"] = "/bin/dash"
		withLibc(ag.Files)
		images = append(images, ag)
	}
	for _, im := range images {
		file := filepath.Join(dir, strings.NewReplacer("/", "_", ":", "_").Replace(im.Name)+".tar")
		if err := im.WriteOCI(file); err != nil {
			return fmt.Errorf("image %s: %w", im.Name, err)
		}
		l.Images = append(l.Images, file)
	}
	return nil
}
