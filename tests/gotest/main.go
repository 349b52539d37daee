// Command gotest runs `go test -json` with the given arguments and prints
// what plain `go test` would, followed by a recap of every failed test's
// own last lines. A failing end-to-end test dumps its cluster's process
// logs, which can be long; CI shows the end of the output, which without
// the recap is the dump and not the message that says what failed.
//
//	go run ./tests/gotest -count=1 -timeout 13m ./...
//
// It exits with go test's status. $GO names the go command (default go).
package main

import (
	"errors"
	"fmt"
	"io"
	"os"
	"os/exec"
)

func main() {
	os.Exit(run(os.Args[1:], os.Stdout, os.Stderr))
}

func run(args []string, out, errOut io.Writer) int {
	goCmd := os.Getenv("GO")
	if goCmd == "" {
		goCmd = "go"
	}
	cmd := exec.Command(goCmd, append([]string{"test", "-json"}, args...)...)
	cmd.Stderr = errOut
	stdout, err := cmd.StdoutPipe()
	if err != nil {
		fmt.Fprintln(errOut, "gotest:", err)
		return 2
	}
	if err := cmd.Start(); err != nil {
		fmt.Fprintln(errOut, "gotest: start go test:", err)
		return 2
	}
	r := newReporter(out)
	readErr := r.consume(stdout)
	waitErr := cmd.Wait()
	r.recap()
	if readErr != nil {
		fmt.Fprintln(errOut, "gotest: read go test output:", readErr)
		return 2
	}
	var exit *exec.ExitError
	switch {
	case errors.As(waitErr, &exit):
		return exit.ExitCode()
	case waitErr != nil:
		fmt.Fprintln(errOut, "gotest: go test:", waitErr)
		return 2
	case r.failed():
		return 1
	}
	return 0
}
