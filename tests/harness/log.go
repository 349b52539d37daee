package harness

import (
	"fmt"
	"os"
	"strings"
	"testing"
	"time"
)

// LogLines returns the lines of the node's wgcnid log containing substr.
func (n *Node) LogLines(substr string) []string {
	b, _ := os.ReadFile(n.LogPath)
	var out []string
	for _, l := range strings.Split(string(b), "\n") {
		if strings.Contains(l, substr) {
			out = append(out, l)
		}
	}
	return out
}

// WaitLog waits until the node's wgcnid log contains every one of subs
// and returns the log; it fails the test with the log's end otherwise.
func (n *Node) WaitLog(tb testing.TB, timeout time.Duration, subs ...string) string {
	tb.Helper()
	var log string
	err := WaitFor(timeout, "log of "+n.Name+" to say "+strings.Join(subs, " + "), func() (bool, error) {
		b, _ := os.ReadFile(n.LogPath)
		log = string(b)
		for _, s := range subs {
			if !strings.Contains(log, s) {
				return false, nil
			}
		}
		return true, nil
	})
	if err != nil {
		end := log
		if len(end) > 3000 {
			end = "…" + end[len(end)-3000:]
		}
		tb.Fatalf("%v\nlog:\n%s", err, end)
	}
	return log
}

// Result prints a test's summary line ("RESULT TestName: ..."), to the
// test log and to stdout, where the README's figures are read from.
func Result(tb testing.TB, format string, args ...any) {
	tb.Helper()
	line := "RESULT " + tb.Name() + ": " + fmt.Sprintf(format, args...)
	tb.Log(line)
	fmt.Println(line)
}
