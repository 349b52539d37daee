package lab

import (
	"archive/tar"
	"bytes"
	"crypto/sha256"
	"encoding/hex"
	"encoding/json"
	"fmt"
	"os"
	"os/exec"
	"path"
	"sort"
	"strings"
	"time"
)

// Image is a container image built here, offline, from local files: no
// registry is reachable from the lab. WriteOCI writes it as an OCI image
// layout tarball, which `ctr images import` loads into a node's containerd
// under Name.
type Image struct {
	// Name is the full reference the manifests use, e.g.
	// registry.k8s.io/pause:3.10.1.
	Name       string
	Entrypoint []string
	Cmd        []string
	// Files maps a path in the image to a file on this machine, copied
	// with its mode.
	Files map[string]string
	// Links maps a path in the image to a symlink target.
	Links map[string]string
}

// AddBusybox puts Debian's static busybox at /bin/busybox with a link for
// every applet (what the busybox image of conf/kubernetes/Dockerfile has).
func (im *Image) AddBusybox() error {
	bb, err := exec.LookPath("busybox")
	if err != nil {
		return fmt.Errorf("busybox (apt-get install busybox-static): %w", err)
	}
	out, err := exec.Command(bb, "--list").Output()
	if err != nil {
		return fmt.Errorf("busybox --list: %w", err)
	}
	if im.Files == nil {
		im.Files = map[string]string{}
	}
	if im.Links == nil {
		im.Links = map[string]string{}
	}
	im.Files["/bin/busybox"] = bb
	for _, a := range strings.Fields(string(out)) {
		if a != "busybox" && !strings.ContainsAny(a, "[/") {
			im.Links["/bin/"+a] = "busybox"
		}
	}
	return nil
}

// layer is the image's only layer, an uncompressed tar.
func (im *Image) layer() ([]byte, error) {
	var buf bytes.Buffer
	tw := tar.NewWriter(&buf)
	mtime := time.Unix(0, 0)
	dirs := map[string]bool{}
	var paths []string
	for p := range im.Files {
		paths = append(paths, p)
	}
	for p := range im.Links {
		paths = append(paths, p)
	}
	sort.Strings(paths)
	// /tmp and /etc exist in every image: programs expect them.
	for _, p := range append([]string{"/tmp/x", "/etc/x"}, paths...) {
		var parents []string
		for d := path.Dir(p); d != "/" && !dirs[d]; d = path.Dir(d) {
			parents = append([]string{d}, parents...)
			dirs[d] = true
		}
		for _, d := range parents {
			mode := int64(0o755)
			if d == "/tmp" {
				mode = 0o1777
			}
			if err := tw.WriteHeader(&tar.Header{Typeflag: tar.TypeDir, Name: strings.TrimPrefix(d, "/") + "/", Mode: mode, ModTime: mtime}); err != nil {
				return nil, err
			}
		}
	}
	for _, p := range paths {
		name := strings.TrimPrefix(p, "/")
		if target, ok := im.Links[p]; ok {
			if err := tw.WriteHeader(&tar.Header{Typeflag: tar.TypeSymlink, Name: name, Linkname: target, Mode: 0o777, ModTime: mtime}); err != nil {
				return nil, err
			}
			continue
		}
		src := im.Files[p]
		data, err := os.ReadFile(src)
		if err != nil {
			return nil, fmt.Errorf("image %s: %w", im.Name, err)
		}
		st, err := os.Stat(src)
		if err != nil {
			return nil, err
		}
		if err := tw.WriteHeader(&tar.Header{Typeflag: tar.TypeReg, Name: name, Mode: int64(st.Mode().Perm()), Size: int64(len(data)), ModTime: mtime}); err != nil {
			return nil, err
		}
		if _, err := tw.Write(data); err != nil {
			return nil, err
		}
	}
	if err := tw.Close(); err != nil {
		return nil, err
	}
	return buf.Bytes(), nil
}

type descriptor struct {
	MediaType   string            `json:"mediaType"`
	Digest      string            `json:"digest"`
	Size        int               `json:"size"`
	Annotations map[string]string `json:"annotations,omitempty"`
	Platform    map[string]string `json:"platform,omitempty"`
}

func describe(mediaType string, data []byte) descriptor {
	sum := sha256.Sum256(data)
	return descriptor{MediaType: mediaType, Digest: "sha256:" + hex.EncodeToString(sum[:]), Size: len(data)}
}

// WriteOCI writes the image as an OCI image layout tarball to file.
func (im *Image) WriteOCI(file string) error {
	layer, err := im.layer()
	if err != nil {
		return err
	}
	ld := describe("application/vnd.oci.image.layer.v1.tar", layer)
	config, err := json.Marshal(map[string]any{
		"architecture": "amd64",
		"os":           "linux",
		"config": map[string]any{
			"Entrypoint": im.Entrypoint,
			"Cmd":        im.Cmd,
			"Env":        []string{"PATH=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin"},
		},
		"rootfs": map[string]any{"type": "layers", "diff_ids": []string{ld.Digest}},
	})
	if err != nil {
		return err
	}
	cd := describe("application/vnd.oci.image.config.v1+json", config)
	manifest, err := json.Marshal(map[string]any{
		"schemaVersion": 2,
		"mediaType":     "application/vnd.oci.image.manifest.v1+json",
		"config":        cd,
		"layers":        []descriptor{ld},
	})
	if err != nil {
		return err
	}
	md := describe("application/vnd.oci.image.manifest.v1+json", manifest)
	md.Platform = map[string]string{"architecture": "amd64", "os": "linux"}
	_, tag, _ := strings.Cut(im.Name[strings.LastIndex(im.Name, "/")+1:], ":")
	md.Annotations = map[string]string{"io.containerd.image.name": im.Name, "org.opencontainers.image.ref.name": tag}
	index, err := json.Marshal(map[string]any{"schemaVersion": 2, "mediaType": "application/vnd.oci.image.index.v1+json", "manifests": []descriptor{md}})
	if err != nil {
		return err
	}
	var buf bytes.Buffer
	tw := tar.NewWriter(&buf)
	put := func(name string, data []byte) error {
		if err := tw.WriteHeader(&tar.Header{Typeflag: tar.TypeReg, Name: name, Mode: 0o644, Size: int64(len(data))}); err != nil {
			return err
		}
		_, err := tw.Write(data)
		return err
	}
	blob := func(d descriptor) string { return "blobs/sha256/" + strings.TrimPrefix(d.Digest, "sha256:") }
	for _, f := range []struct {
		name string
		data []byte
	}{
		{"oci-layout", []byte(`{"imageLayoutVersion":"1.0.0"}`)},
		{"index.json", index},
		{blob(md), manifest},
		{blob(cd), config},
		{blob(ld), layer},
	} {
		if err := put(f.name, f.data); err != nil {
			return err
		}
	}
	if err := tw.Close(); err != nil {
		return err
	}
	return os.WriteFile(file, buf.Bytes(), 0o644)
}
