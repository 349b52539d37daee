// Package buildinfo is the build's identity, for `--version` on every
// binary: an operator filing a bug names exactly what runs. (The CNI
// plugins' VERSION verb answers which CNI spec versions they speak, which
// is something else.)
package buildinfo

import (
	"fmt"
	"io"
	"runtime"
	"runtime/debug"
)

// version is stamped by the Makefile at link time:
// -ldflags "-X github.com/wgcni/wgcni/daemon/buildinfo.version=$(git describe)".
// It is written only by the linker.
var version string

// Version is the stamped version, or what the Go toolchain recorded (the
// module version, else the VCS revision) for a plain `go build`.
func Version() string {
	if version != "" {
		return version
	}
	bi, ok := debug.ReadBuildInfo()
	if !ok {
		return "unknown"
	}
	if v := bi.Main.Version; v != "" && v != "(devel)" {
		return v
	}
	rev, dirty := "", ""
	for _, s := range bi.Settings {
		switch s.Key {
		case "vcs.revision":
			rev = s.Value
		case "vcs.modified":
			if s.Value == "true" {
				dirty = "-dirty"
			}
		}
	}
	if len(rev) > 12 {
		rev = rev[:12]
	}
	if rev == "" {
		return "devel"
	}
	return rev + dirty
}

// String is the line `PROG --version` prints.
func String(prog string) string {
	return fmt.Sprintf("%s %s (%s, %s/%s)", prog, Version(), runtime.Version(), runtime.GOOS, runtime.GOARCH)
}

// IsVersionArg reports whether args ask for the version the way operators
// type it: `version`, `--version` or `-version`.
func IsVersionArg(args []string) bool {
	return len(args) == 1 && (args[0] == "version" || args[0] == "--version" || args[0] == "-version")
}

// IsHelpArg reports whether args ask for help: `help`, `--help`, `-help`, `-h`.
func IsHelpArg(args []string) bool {
	return len(args) >= 1 && (args[0] == "help" || args[0] == "--help" || args[0] == "-help" || args[0] == "-h")
}

// PluginCommandLine answers `--version` and `--help` for a CNI plugin that
// an operator runs by hand. Runtimes call plugins with no arguments and
// CNI_COMMAND set, so neither ever reaches a real CNI call. It reports
// whether it handled args.
func PluginCommandLine(prog, about string, args []string, w io.Writer) bool {
	switch {
	case IsVersionArg(args):
		fmt.Fprintln(w, String(prog))
	case IsHelpArg(args):
		fmt.Fprintf(w, "%s: %s\n%s\n\n"+
			"A CNI plugin: the container runtime runs it with CNI_COMMAND (ADD, DEL, CHECK, STATUS,\n"+
			"GC, VERSION) and the network configuration on stdin; see the README's conflist reference.\n"+
			"By hand: `%s --version` prints the build; CNI_COMMAND=VERSION %s prints the CNI\n"+
			"spec versions it speaks.\n", prog, about, String(prog), prog, prog)
	default:
		return false
	}
	return true
}
