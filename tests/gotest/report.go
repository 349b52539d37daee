package main

import (
	"bufio"
	"encoding/json"
	"fmt"
	"io"
	"sort"
	"strings"
)

// event is one line of `go test -json` (cmd/test2json).
type event struct {
	Action  string
	Package string
	Test    string
	Output  string
	Elapsed float64
}

// dumpMarker starts the harness's process-log dump of a failed run
// (tests/harness: Cluster.DumpLogs). A dump is a single multi-line t.Logf:
// its lines are indented deeper than the line that starts it.
const dumpMarker = "process logs of the failed run"

// recapLines is how many of a failed test's own last lines the recap shows.
const recapLines = 12

type testKey struct{ pkg, test string }

type testState struct {
	lines  []string
	failed bool
	// childFailed: a subtest failed, which is where the message is.
	childFailed bool
}

// reporter renders a `go test -json` stream the way plain `go test` does
// (fmt output of every test and the package summaries as they come, the
// whole output of failed tests), and keeps what the recap needs.
type reporter struct {
	out              io.Writer
	tests            map[testKey]*testState
	order            []testKey // failed tests, in the order they failed
	pkgOut           map[string][]string
	failPkg          []string
	pkgHasFailedTest map[string]bool
}

func newReporter(out io.Writer) *reporter {
	return &reporter{out: out, tests: map[testKey]*testState{}, pkgOut: map[string][]string{}, pkgHasFailedTest: map[string]bool{}}
}

// consume reads the whole stream. A line that is not JSON (a build error
// printed by the go command itself) is passed through as it is.
func (r *reporter) consume(in io.Reader) error {
	sc := bufio.NewScanner(in)
	sc.Buffer(make([]byte, 0, 1<<20), 16<<20)
	for sc.Scan() {
		line := sc.Bytes()
		var ev event
		if len(line) == 0 || line[0] != '{' || json.Unmarshal(line, &ev) != nil {
			fmt.Fprintln(r.out, string(line))
			continue
		}
		r.handle(ev)
	}
	return sc.Err()
}

func (r *reporter) state(k testKey) *testState {
	s := r.tests[k]
	if s == nil {
		s = &testState{}
		r.tests[k] = s
	}
	return s
}

func (r *reporter) handle(ev event) {
	switch {
	case ev.Action == "build-output":
		fmt.Fprint(r.out, ev.Output)
		r.pkgOut[ev.Package] = append(r.pkgOut[ev.Package], strings.TrimRight(ev.Output, "\n"))
	case ev.Test == "" && ev.Action == "output":
		// Package level: "ok  pkg 1.2s", "FAIL pkg", a panic, a timeout.
		line := strings.TrimRight(ev.Output, "\n")
		r.pkgOut[ev.Package] = append(r.pkgOut[ev.Package], line)
		if line != "PASS" && !strings.HasPrefix(line, "=== ") {
			fmt.Fprintln(r.out, line)
		}
	case ev.Test == "" && ev.Action == "fail":
		r.failPkg = append(r.failPkg, ev.Package)
	case ev.Action == "output":
		line := strings.TrimRight(ev.Output, "\n")
		s := r.state(testKey{ev.Package, ev.Test})
		s.lines = append(s.lines, line)
		if isProgramOutput(line) {
			// What a test prints itself (figures): shown at once, as
			// plain `go test` does.
			fmt.Fprintln(r.out, line)
		}
	case ev.Action == "fail":
		k := testKey{ev.Package, ev.Test}
		s := r.state(k)
		s.failed = true
		r.order = append(r.order, k)
		r.pkgHasFailedTest[ev.Package] = true
		for p := parentOf(ev.Test); p != ""; p = parentOf(p) {
			r.state(testKey{ev.Package, p}).childFailed = true
		}
		for _, l := range s.lines {
			if !isFramework(l) || strings.HasPrefix(strings.TrimSpace(l), "--- FAIL") {
				fmt.Fprintln(r.out, l)
			}
		}
	case ev.Action == "pass" || ev.Action == "skip":
		if ev.Test != "" {
			delete(r.tests, testKey{ev.Package, ev.Test})
		}
	}
}

// recap prints, after everything else (so that it is what the end of a
// long log shows), each failed test's own last lines without the process
// log dumps, and the end of the output of packages that failed without a
// failed test (build failure, panic, timeout).
func (r *reporter) recap() {
	if len(r.order) == 0 && len(r.failPkg) == 0 {
		return
	}
	fmt.Fprintf(r.out, "\n==== FAILED: the last lines of each failed test (process-log dumps left out; they are above)\n")
	for _, k := range r.order {
		s := r.tests[k]
		if s.childFailed {
			continue
		}
		fmt.Fprintf(r.out, "--- %s %s\n", k.pkg, k.test)
		for _, l := range lastOwnLines(s.lines, recapLines) {
			fmt.Fprintln(r.out, l)
		}
	}
	pkgs := append([]string(nil), r.failPkg...)
	sort.Strings(pkgs)
	for _, p := range pkgs {
		if r.pkgHasFailedTest[p] {
			continue
		}
		fmt.Fprintf(r.out, "--- %s (no failed test: build failure, panic or timeout)\n", p)
		ls := r.pkgOut[p]
		if len(ls) > 2*recapLines {
			ls = ls[len(ls)-2*recapLines:]
		}
		for _, l := range ls {
			fmt.Fprintln(r.out, l)
		}
	}
}

// lastOwnLines returns the last n lines of a test's output that are
// neither framework lines nor inside a process-log dump.
func lastOwnLines(lines []string, n int) []string {
	var own []string
	dumpIndent := -1
	for _, l := range lines {
		ind := indentOf(l)
		if dumpIndent >= 0 {
			if ind > dumpIndent || strings.TrimSpace(l) == "" {
				continue
			}
			dumpIndent = -1
		}
		if strings.Contains(l, dumpMarker) {
			dumpIndent = ind
			continue
		}
		if isFramework(l) {
			continue
		}
		own = append(own, l)
	}
	if len(own) > n {
		own = own[len(own)-n:]
	}
	return own
}

// isFramework reports the lines the testing package writes itself.
func isFramework(l string) bool {
	t := strings.TrimSpace(l)
	for _, p := range []string{"=== RUN", "=== PAUSE", "=== CONT", "=== NAME", "--- PASS", "--- FAIL", "--- SKIP"} {
		if strings.HasPrefix(t, p) {
			return true
		}
	}
	return t == "PASS" || t == "FAIL"
}

// isProgramOutput reports a line a test printed to stdout itself rather
// than through t.Log (which go test indents).
func isProgramOutput(l string) bool {
	return l != "" && l[0] != ' ' && l[0] != '\t' && !isFramework(l)
}

func indentOf(l string) int {
	return len(l) - len(strings.TrimLeft(l, " \t"))
}

func parentOf(test string) string {
	if i := strings.LastIndexByte(test, '/'); i >= 0 {
		return test[:i]
	}
	return ""
}

// failed reports whether any test or package failed.
func (r *reporter) failed() bool { return len(r.order) > 0 || len(r.failPkg) > 0 }
