// Command wgcnid is the wgcni node daemon. See daemon/agent for what it
// does; this file only dispatches subcommands.
package main

import (
	"context"
	"errors"
	"flag"
	"fmt"
	"os"
	"os/signal"
	"syscall"
	"time"

	"github.com/wgcni/wgcni/daemon/agent"
	"github.com/wgcni/wgcni/daemon/config"
	"github.com/wgcni/wgcni/daemon/samenode"
	"github.com/wgcni/wgcni/daemon/wgdev"
)

func main() { os.Exit(run(os.Args[1:])) }

func run(args []string) int {
	cmd := "run"
	if len(args) > 0 && (args[0] == "cleanup" || args[0] == "userspace-device" || args[0] == "samenode-host" || args[0] == "rotate-key") {
		cmd, args = args[0], args[1:]
	}
	if cmd == "userspace-device" {
		return wgdev.RunHost(args, os.Stderr)
	}
	if cmd == "samenode-host" {
		return samenode.RunHost(args, os.Stderr)
	}
	cfg, err := config.Parse("wgcnid "+cmd, args, os.Stderr)
	if errors.Is(err, flag.ErrHelp) {
		return 0
	}
	if err != nil {
		fmt.Fprintf(os.Stderr, "wgcnid: %v\n", err)
		return 2
	}
	log := cfg.NewLogger(os.Stderr).With("node", cfg.NodeName)
	// SIGHUP asks the daemon to look for a key rotation request; caught
	// from the start so an early one never terminates the daemon.
	signal.Notify(make(chan os.Signal, 1), syscall.SIGHUP)
	ctx, stop := signal.NotifyContext(context.Background(), syscall.SIGTERM, syscall.SIGINT)
	defer stop()
	switch {
	case cmd == "cleanup":
		err = agent.Cleanup(ctx, cfg, log)
	case cmd == "rotate-key":
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
