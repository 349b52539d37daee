// Command wgcnid is the wgcni node daemon. See daemon/agent for what it
// does; this file only dispatches subcommands.
package main

import (
	"context"
	"errors"
	"flag"
	"fmt"
	"io"
	"os"
	"os/signal"
	"strings"
	"syscall"
	"time"

	"github.com/wgcni/wgcni/daemon/agent"
	"github.com/wgcni/wgcni/daemon/buildinfo"
	"github.com/wgcni/wgcni/daemon/config"
	"github.com/wgcni/wgcni/daemon/etcdboot"
	"github.com/wgcni/wgcni/daemon/samenode/poddevices"
	"github.com/wgcni/wgcni/daemon/tundev"
	"github.com/wgcni/wgcni/daemon/wgdev"
)

// command is one wgcnid subcommand.
type command struct {
	name     string
	summary  string
	internal bool // started by wgcnid itself (or a sidecar), not typed by operators
	run      func(args []string) int
}

func commands() []command {
	return []command{
		{name: "run", summary: "run the node daemon (the default when no command is given)", run: daemonCommand("run")},
		{name: "cleanup", summary: "remove what the daemon created (device, routes, own etcd record; bridge and tables once no pod is left)", run: daemonCommand("cleanup")},
		{name: "rotate-key", summary: "make the running daemon rotate its WireGuard key and wait until it has", run: daemonCommand("rotate-key")},
		{name: "etcd-bootstrap", summary: "Kubernetes: certificates (certs) and users (auth) of the etcd conf/kubernetes/ brings", internal: true, run: func(a []string) int { return etcdboot.Command(a, os.Stderr) }},
		{name: "tun-access", summary: "as root, before an unprivileged wgcnid starts: let its group open /dev/net/tun", run: func(a []string) int { return tundev.Command(a, os.Stdout, os.Stderr) }},
		{name: "version", summary: "print the build's version", run: func([]string) int { fmt.Println(buildinfo.String("wgcnid")); return 0 }},
		{name: "help", summary: "help for wgcnid or one of its commands", run: func(a []string) int { return help(a, os.Stdout) }},
		{name: "userspace-device", summary: "host a userspace WireGuard device (spawned by wgcnid, or run as a sidecar)", internal: true, run: func(a []string) int { return wgdev.RunUserspaceDevice(a, os.Stderr) }},
		{name: "samenode-host", summary: "host the same-node pod WireGuard devices (spawned by wgcnid)", internal: true, run: func(a []string) int { return poddevices.Serve(a, os.Stderr) }},
	}
}

func main() { os.Exit(run(os.Args[1:])) }

func run(args []string) int {
	if buildinfo.IsVersionArg(args) {
		args = []string{"version"}
	}
	if len(args) > 0 && (args[0] == "--help" || args[0] == "-help" || args[0] == "-h") {
		return help(nil, os.Stdout)
	}
	name := "run"
	if len(args) > 0 && !strings.HasPrefix(args[0], "-") {
		name, args = args[0], args[1:]
	}
	for _, c := range commands() {
		if c.name == name {
			return c.run(args)
		}
	}
	fmt.Fprintf(os.Stderr, "wgcnid: unknown command %q\n\n", name)
	usage(os.Stderr)
	return 2
}

func usage(w io.Writer) {
	fmt.Fprintf(w, "Usage: wgcnid [COMMAND] [flags]\n\n%s\n\nCommands:\n", buildinfo.String("wgcnid"))
	for _, internal := range []bool{false, true} {
		if internal {
			fmt.Fprintf(w, "\nStarted by wgcnid itself (or a sidecar container):\n")
		}
		for _, c := range commands() {
			if c.internal == internal {
				fmt.Fprintf(w, "  %-17s %s\n", c.name, c.summary)
			}
		}
	}
	fmt.Fprintf(w, "\n`wgcnid help COMMAND` or `wgcnid COMMAND --help` lists a command's flags.\n")
}

// help prints wgcnid's usage, or a command's flags (help COMMAND).
func help(args []string, w io.Writer) int {
	if len(args) == 0 {
		usage(w)
		return 0
	}
	for _, c := range commands() {
		if c.name == args[0] && c.name != "help" && c.name != "version" {
			return c.run([]string{"--help"})
		}
	}
	fmt.Fprintf(os.Stderr, "wgcnid help: unknown command %q\n", args[0])
	return 2
}

// daemonCommand runs one of the commands that take the daemon's flags.
func daemonCommand(cmd string) func([]string) int {
	return func(args []string) int {
		cfg, err := config.Parse("wgcnid "+cmd, args, os.Stderr)
		if errors.Is(err, flag.ErrHelp) {
			return 0
		}
		if err != nil {
			fmt.Fprintf(os.Stderr, "wgcnid %s: %v\n", cmd, err)
			return 2
		}
		log := cfg.NewLogger(os.Stderr).With("node", cfg.NodeName)
		if cmd == "run" {
			log.Info("wgcnid starting", "version", buildinfo.Version())
		}
		// SIGHUP asks the daemon to look for a key rotation request; caught
		// from the start so an early one never terminates the daemon.
		signal.Notify(make(chan os.Signal, 1), syscall.SIGHUP)
		ctx, stop := signal.NotifyContext(context.Background(), syscall.SIGTERM, syscall.SIGINT)
		defer stop()
		switch cmd {
		case "cleanup":
			err = agent.Cleanup(ctx, cfg, log)
		case "rotate-key":
			err = agent.RequestRotation(ctx, cfg, os.Stdout, time.Minute)
		default:
			err = agent.Run(ctx, cfg, log)
		}
		if err != nil {
			log.Error("wgcnid failed", "cmd", cmd, "err", err)
			return 1
		}
		return 0
	}
}
