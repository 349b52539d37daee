package manifests

import (
	"io"
	"os"
	"path/filepath"
	"slices"
	"strings"
	"testing"

	appsv1 "k8s.io/api/apps/v1"
	corev1 "k8s.io/api/core/v1"
	"k8s.io/apimachinery/pkg/util/strategicpatch"
	"sigs.k8s.io/yaml"

	"github.com/wgcni/wgcni/daemon/config"
)

const (
	sidecarPatch     = "conf/patches/userspace-sidecar.yaml"
	sidecarContainer = "wireguard"
)

// TestUserspaceSidecarPatch applies conf/patches/userspace-sidecar.yaml to
// the stock DaemonSet the way `kubectl patch` does (strategic merge) and
// holds the result to every check the stock bundle passes, plus what the
// sidecar needs: wgcnid's flags are the stock ones with --wireguard=userspace
// and --device-host=external, and the sidecar hosts the device wgcnid
// configures (same name, the same socket directory and TUN, a writable
// run dir, no CPU limit).
func TestUserspaceSidecarPatch(t *testing.T) {
	root := repoRoot(t)
	files, err := readYAMLTree(filepath.Join(root, "conf", "kubernetes"))
	if err != nil {
		t.Fatal(err)
	}
	patch, err := os.ReadFile(filepath.Join(root, sidecarPatch))
	if err != nil {
		t.Fatal(err)
	}
	// The patch alone must be a valid DaemonSet fragment: a misspelt field
	// would otherwise be dropped silently by the merge.
	if err := decodeStrict(patch, &appsv1.DaemonSet{}); err != nil {
		t.Fatalf("%s: %v", sidecarPatch, err)
	}
	stock, err := decodeBundle(files)
	if err != nil {
		t.Fatal(err)
	}
	const dsFile = "20-daemonset.yaml"
	base, err := yaml.YAMLToJSON(files[dsFile])
	if err != nil {
		t.Fatal(err)
	}
	pj, err := yaml.YAMLToJSON(patch)
	if err != nil {
		t.Fatal(err)
	}
	merged, err := strategicpatch.StrategicMergePatch(base, pj, appsv1.DaemonSet{})
	if err != nil {
		t.Fatalf("strategic merge of %s: %v", sidecarPatch, err)
	}
	if files[dsFile], err = yaml.JSONToYAML(merged); err != nil {
		t.Fatal(err)
	}
	b, err := decodeBundle(files)
	if err != nil {
		t.Fatal(err)
	}
	for _, pr := range checkBundle(b, loadExampleConflist(t, root)) {
		t.Error("patched:", pr)
	}

	ds := b.daemonSets[daemonSetName]
	ps := &ds.Spec.Template.Spec
	daemon, side := findContainer(ps.Containers, daemonContainer), findContainer(ps.Containers, sidecarContainer)
	if daemon == nil || side == nil {
		t.Fatalf("patched pod has containers %v, want %s and %s", containerNames(ps.Containers), daemonContainer, sidecarContainer)
	}

	// wgcnid: the stock flags, with exactly these two changed or added.
	want := slices.DeleteFunc(slices.Clone(findContainer(stock.daemonSets[daemonSetName].Spec.Template.Spec.Containers, daemonContainer).Args), func(a string) bool {
		return strings.HasPrefix(a, "--wireguard=") || strings.HasPrefix(a, "--device-host=")
	})
	want = append(want, "--wireguard=userspace", "--device-host=external")
	got := slices.Clone(daemon.Args)
	slices.Sort(want)
	slices.Sort(got)
	if !slices.Equal(got, want) {
		t.Errorf("patched wgcnid flags differ from the stock ones + --wireguard=userspace --device-host=external:\n got %v\nwant %v", got, want)
	}
	// They must also be flags wgcnid accepts together.
	// $(VAR)s are the kubelet's to fill in; stand-ins of the right shape.
	runtime := map[string]string{"WGCNI_ETCD_ENDPOINTS": "https://10.0.0.1:2379", "WGCNI_NODE_NAME": "node-1", "WGCNI_HOST_IP": "10.0.0.2"}
	var args []string
	for _, a := range daemon.Args {
		args = append(args, varRef.ReplaceAllStringFunc(a, func(ref string) string { return runtime[varRef.FindStringSubmatch(ref)[1]] }))
	}
	cfg, err := config.Parse("wgcnid", args, io.Discard)
	if err != nil {
		t.Fatalf("patched wgcnid flags: %v", err)
	}
	if cfg.DeviceHost != config.HostExternal || cfg.WireGuard != config.ModeUserspace {
		t.Fatalf("patched wgcnid: --device-host=%s --wireguard=%s", cfg.DeviceHost, cfg.WireGuard)
	}

	// The sidecar hosts the device wgcnid looks for.
	if len(side.Command) == 0 || filepath.Base(side.Command[0]) != "wgcnid" || len(side.Args) == 0 || side.Args[0] != "userspace-device" {
		t.Errorf("sidecar runs %v %v, want wgcnid userspace-device", side.Command, side.Args)
	}
	if !slices.Contains(side.Args, "--name="+cfg.Device) {
		t.Errorf("sidecar args %v do not host wgcnid's device %q", side.Args, cfg.Device)
	}
	vols := map[string]corev1.Volume{}
	for _, v := range ps.Volumes {
		vols[v.Name] = v
	}
	mounts := func(c *corev1.Container) map[string]string {
		m := map[string]string{}
		for _, vm := range c.VolumeMounts {
			m[vm.MountPath] = vm.Name
		}
		return m
	}
	dm, sm := mounts(daemon), mounts(side)
	for _, path := range []string{wireguardSocketDir, tunDevice} {
		if sm[path] == "" || sm[path] != dm[path] {
			t.Errorf("sidecar mounts %s from volume %q, wgcnid from %q: they must share it", path, sm[path], dm[path])
		}
	}
	runDir := ""
	for _, a := range side.Args {
		if v, ok := strings.CutPrefix(a, "--run-dir="); ok {
			runDir = v
		}
	}
	if v, ok := vols[sm[runDir]]; runDir == "" || !ok || v.EmptyDir == nil {
		t.Errorf("sidecar --run-dir %q must be a writable emptyDir mount (the root filesystem is read-only)", runDir)
	}
	if !side.Resources.Limits.Cpu().IsZero() {
		t.Errorf("sidecar has a CPU limit: it encrypts the node's traffic, throttling caps it")
	}
}

func containerNames(cs []corev1.Container) []string {
	var n []string
	for _, c := range cs {
		n = append(n, c.Name)
	}
	return n
}
