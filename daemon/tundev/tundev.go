// Package tundev is about the TUN clone device, /dev/net/tun, that
// userspace WireGuard opens: telling an operator exactly why it cannot be
// opened, and giving an unprivileged daemon access to it without any
// capability beyond CAP_NET_ADMIN.
//
// Hosts differ: udev makes the node 0666 on a stock Debian desktop, but
// devtmpfs creates it 0600 root:root, and containers, minimal and hardened
// images keep it that way. An unprivileged daemon (the systemd unit's
// User=wgcni) cannot open a 0600 node, and CAP_NET_ADMIN does not help:
// opening a file is a permission check, TUNSETIFF comes after. The fix
// wgcni ships is a group grant made by root before the daemon starts
// (`wgcnid tun-access --group wgcni`, the unit's ExecStartPre=+): the
// daemon gets read/write through its group and no new capability, and
// nothing is taken from anyone (a 0666 node is left alone).
package tundev

import (
	"errors"
	"flag"
	"fmt"
	"io"
	"io/fs"
	"os"
	"os/user"
	"strconv"
	"strings"
	"syscall"

	"golang.org/x/sys/unix"
)

// Path is the TUN clone device.
const Path = "/dev/net/tun"

// The TUN clone device's numbers (misc major 10, minor 200).
const (
	major = 10
	minor = 200
)

// Info is what an operator needs to know about the device node.
type Info struct {
	Path string
	Mode fs.FileMode
	UID  int
	GID  int
	Dev  uint64
}

// String is like ls -l: "/dev/net/tun (crw------- root:root)", with ids
// where names do not resolve.
func (i Info) String() string {
	kind := "-"
	switch {
	case i.Mode&fs.ModeCharDevice != 0:
		kind = "c"
	case i.Mode&fs.ModeDevice != 0:
		kind = "b"
	case i.Mode.IsDir():
		kind = "d"
	}
	return fmt.Sprintf("%s (%s%s %s:%s)", i.Path, kind, i.Mode.Perm().String()[1:], userName(i.UID), groupName(i.GID))
}

// Stat describes the node at path.
func Stat(path string) (Info, error) {
	var st syscall.Stat_t
	if err := syscall.Stat(path, &st); err != nil {
		return Info{}, err
	}
	fi, err := os.Stat(path)
	if err != nil {
		return Info{}, err
	}
	return Info{Path: path, Mode: fi.Mode(), UID: int(st.Uid), GID: int(st.Gid), Dev: st.Rdev}, nil
}

// IsTUN reports whether the node is the TUN clone device.
func (i Info) IsTUN() bool {
	return i.Mode&fs.ModeCharDevice != 0 && unix.Major(i.Dev) == major && unix.Minor(i.Dev) == minor
}

// Explain turns a failure to open or use path into an error that names
// the node, its mode and owner, who tried, and the fix. Errors other than
// a missing or inaccessible node are returned as they are.
func Explain(path string, err error) error {
	// wireguard-go reports a missing node as plain text, not as ENOENT:
	// look at the node itself.
	_, serr := os.Stat(path)
	switch {
	case errors.Is(serr, fs.ErrNotExist):
		return fmt.Errorf("%w: %s does not exist: load the tun module (modprobe tun) or create the node (mknod -m 0600 %s c %d %d); in a container, mount the host's %s",
			err, path, path, major, minor, path)
	case errors.Is(err, fs.ErrPermission):
		who := fmt.Sprintf("uid %d gid %d", os.Geteuid(), os.Getegid())
		if gs, gerr := os.Getgroups(); gerr == nil && len(gs) > 0 {
			who += fmt.Sprintf(" groups %v", gs)
		}
		node := path
		if info, serr := Stat(path); serr == nil {
			node = info.String()
		}
		return fmt.Errorf("%w: %s is not readable and writable by this process (%s); CAP_NET_ADMIN does not grant file access: "+
			"let the daemon's group open it by running, as root, `wgcnid tun-access --group <the daemon's group>` before it starts "+
			"(the shipped systemd unit does this in ExecStartPre=+), or run the device host as root with only CAP_NET_ADMIN (the DaemonSet does)",
			err, node, who)
	}
	return err
}

// GrantGroup makes path readable and writable by group gid, changing as
// little as possible, and says what it changed ("" when nothing was
// needed). A node that everyone may already use, or that gid already
// may, is left alone. A node owned by another non-root group is refused
// rather than taken from that group.
func GrantGroup(path string, gid int) (string, error) {
	info, err := Stat(path)
	if err != nil {
		return "", Explain(path, err)
	}
	if !info.IsTUN() {
		return "", fmt.Errorf("%s is not the TUN clone device (want a character device %d:%d, found %s)", path, major, minor, info)
	}
	perm := info.Mode.Perm()
	if perm&0o006 == 0o006 || (info.GID == gid && perm&0o060 == 0o060) {
		return "", nil
	}
	if info.GID != gid && info.GID != 0 {
		return "", fmt.Errorf("%s belongs to group %s, not %s: add the daemon's user to group %s, or make the node group %s yourself",
			info, groupName(info.GID), groupName(gid), groupName(info.GID), groupName(gid))
	}
	var did []string
	if info.GID != gid {
		if err := os.Chown(path, -1, gid); err != nil {
			return "", fmt.Errorf("give %s to group %s: %w", info, groupName(gid), err)
		}
		did = append(did, "group "+groupName(gid))
	}
	newPerm := perm | 0o060
	if err := os.Chmod(path, info.Mode&^fs.ModePerm|newPerm); err != nil {
		return "", fmt.Errorf("make %s group read/write: %w", info, err)
	}
	did = append(did, fmt.Sprintf("mode %#o -> %#o", perm, newPerm))
	return strings.Join(did, ", "), nil
}

// LookupGroup resolves a group name or a numeric gid.
func LookupGroup(s string) (int, error) {
	if gid, err := strconv.Atoi(s); err == nil && gid >= 0 {
		return gid, nil
	}
	g, err := user.LookupGroup(s)
	if err != nil {
		return 0, fmt.Errorf("group %q: %w", s, err)
	}
	return strconv.Atoi(g.Gid)
}

func userName(uid int) string {
	if u, err := user.LookupId(strconv.Itoa(uid)); err == nil {
		return u.Username
	}
	return strconv.Itoa(uid)
}

func groupName(gid int) string {
	if g, err := user.LookupGroupId(strconv.Itoa(gid)); err == nil {
		return g.Name
	}
	return strconv.Itoa(gid)
}

// Command is `wgcnid tun-access`: run as root before an unprivileged
// daemon starts (the systemd unit's ExecStartPre=+), it lets the daemon's
// group open the TUN clone device. It returns the exit code.
func Command(args []string, stdout, stderr io.Writer) int {
	fs := flag.NewFlagSet("wgcnid tun-access", flag.ContinueOnError)
	fs.SetOutput(stderr)
	group := fs.String("group", "wgcni", "group (name or gid) that gets read/write access")
	path := fs.String("device", Path, "the TUN clone device node")
	fs.Usage = func() {
		fmt.Fprintf(stderr, "Usage: wgcnid tun-access [--group G] [--device PATH]\n\n"+
			"Run as root before wgcnid starts as an unprivileged user: makes %s readable and\n"+
			"writable by group G (chgrp + chmod g+rw) when neither everyone nor G already may,\n"+
			"so userspace WireGuard works on hosts whose node is 0600 (containers, minimal and\n"+
			"hardened images). Changes nothing otherwise; never takes a node from another group.\n\n", Path)
		fs.PrintDefaults()
	}
	if err := fs.Parse(args); err != nil {
		if errors.Is(err, flag.ErrHelp) {
			return 0
		}
		return 2
	}
	if fs.NArg() > 0 {
		fmt.Fprintf(stderr, "wgcnid tun-access: unexpected argument %q\n", fs.Arg(0))
		return 2
	}
	gid, err := LookupGroup(*group)
	if err != nil {
		fmt.Fprintf(stderr, "wgcnid tun-access: --group: %v\n", err)
		return 2
	}
	did, err := GrantGroup(*path, gid)
	if err != nil {
		fmt.Fprintf(stderr, "wgcnid tun-access: %v\n", err)
		return 1
	}
	if did == "" {
		did = "nothing to do"
	}
	info, _ := Stat(*path)
	fmt.Fprintf(stdout, "wgcnid tun-access: %s: %s\n", info, did)
	return 0
}
