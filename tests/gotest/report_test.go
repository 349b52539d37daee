package main

import (
	"bytes"
	"os"
	"path/filepath"
	"strings"
	"testing"
)

// The package the real go test runs: a failing subtest whose message is
// followed by a long process-log dump, a passing test that prints a
// figure, and a test that fails on its own.
const failingPkg = `package demo

import (
	"fmt"
	"strings"
	"testing"
)

func TestFigure(t *testing.T) {
	t.Log("a log line of a passing test")
	fmt.Println("FIGURE: 42 widgets")
}

func TestParent(t *testing.T) {
	t.Run("ok", func(t *testing.T) {})
	t.Run("broken", func(t *testing.T) {
		t.Log("before")
		t.Errorf("the message that says what failed")
	})
	t.Logf("process logs of the failed run:\n%s", strings.Repeat("daemon log line\n", 80))
}

func TestAlone(t *testing.T) {
	t.Fatal("alone failed")
}
`

func TestRecapShowsTheMessagesNotTheDump(t *testing.T) {
	dir := t.TempDir()
	if err := os.WriteFile(filepath.Join(dir, "go.mod"), []byte("module demo\n\ngo 1.22\n"), 0o644); err != nil {
		t.Fatal(err)
	}
	if err := os.WriteFile(filepath.Join(dir, "demo_test.go"), []byte(failingPkg), 0o644); err != nil {
		t.Fatal(err)
	}
	wd, _ := os.Getwd()
	if err := os.Chdir(dir); err != nil {
		t.Fatal(err)
	}
	defer os.Chdir(wd)
	var out, errOut bytes.Buffer
	code := run([]string{"-count=1", "."}, &out, &errOut)
	if code != 1 {
		t.Fatalf("exit %d, want go test's 1\nstdout:\n%s\nstderr:\n%s", code, out.String(), errOut.String())
	}
	s := out.String()
	i := strings.Index(s, "==== FAILED")
	if i < 0 {
		t.Fatalf("no recap:\n%s", s)
	}
	body, recap := s[:i], s[i:]
	for _, want := range []string{"FIGURE: 42 widgets", "--- FAIL: TestParent/broken", "the message that says what failed", "daemon log line", "FAIL\tdemo"} {
		if !strings.Contains(body, want) {
			t.Errorf("output lacks %q:\n%s", want, body)
		}
	}
	if strings.Contains(body, "a log line of a passing test") {
		t.Errorf("a passing test's t.Log is shown (plain go test hides it):\n%s", body)
	}
	for _, want := range []string{"demo TestParent/broken", "the message that says what failed", "demo TestAlone", "alone failed"} {
		if !strings.Contains(recap, want) {
			t.Errorf("recap lacks %q:\n%s", want, recap)
		}
	}
	for _, unwanted := range []string{"daemon log line", "demo TestParent\n", "TestFigure"} {
		if strings.Contains(recap, unwanted) {
			t.Errorf("recap has %q:\n%s", unwanted, recap)
		}
	}
	if len(strings.Split(recap, "\n")) > 12 {
		t.Errorf("recap is %d lines, want it short:\n%s", len(strings.Split(recap, "\n")), recap)
	}
}

func TestLastOwnLinesSkipsDumpBlocks(t *testing.T) {
	lines := []string{
		"    keys_test.go:10: first",
		"    tools.go:81: process logs of the failed run:",
		"        ----- n1/wgcnid.log (last 2 lines)",
		"        a",
		"",
		"        b",
		"    keys_test.go:20: after the dump",
		"--- FAIL: TestX (1.00s)",
	}
	got := strings.Join(lastOwnLines(lines, 5), "|")
	if want := "    keys_test.go:10: first|    keys_test.go:20: after the dump"; got != want {
		t.Fatalf("got %q, want %q", got, want)
	}
}

// FuzzReporter: whatever go test (or a crashing test binary) writes, the
// reporter neither panics nor loses a line that is not an event.
func FuzzReporter(f *testing.F) {
	f.Add([]byte(`{"Action":"output","Package":"p","Test":"T/a","Output":"    x.go:1: m\n"}` + "\n" + `{"Action":"fail","Package":"p","Test":"T/a"}`))
	f.Add([]byte("# build failed\n{\"Action\":\"fail\",\"Package\":\"p\"}\n"))
	f.Add([]byte(`{"Action":"fail","Package":"p","Test":"/"}`))
	f.Fuzz(func(t *testing.T, data []byte) {
		var out bytes.Buffer
		r := newReporter(&out)
		_ = r.consume(bytes.NewReader(data))
		r.recap()
		for _, l := range strings.Split(string(data), "\n") {
			l = strings.TrimSuffix(l, "\r") // bufio.ScanLines drops it
			if l != "" && !strings.HasPrefix(l, "{") && len(l) < 1<<20 && !strings.Contains(out.String(), l) {
				t.Fatalf("non-JSON line %q lost", l)
			}
		}
	})
}
