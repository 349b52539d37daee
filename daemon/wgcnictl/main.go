// Command wgcnictl shows a wgcni node's state to its operator; see
// daemon/ctl.
package main

import (
	"os"

	"github.com/wgcni/wgcni/daemon/ctl"
)

func main() { os.Exit(ctl.Main(os.Args[1:], os.Stdout, os.Stderr)) }
