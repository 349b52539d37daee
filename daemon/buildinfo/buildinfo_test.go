package buildinfo

import (
	"runtime"
	"strings"
	"testing"
)

func TestString(t *testing.T) {
	s := String("wgcnid")
	if !strings.HasPrefix(s, "wgcnid ") || !strings.Contains(s, runtime.Version()) || strings.Contains(s, "wgcnid  ") {
		t.Fatalf("String = %q", s)
	}
	if Version() == "" {
		t.Fatal("empty version")
	}
}

func TestArgs(t *testing.T) {
	for _, a := range [][]string{{"version"}, {"--version"}, {"-version"}} {
		if !IsVersionArg(a) {
			t.Errorf("%v is a version request", a)
		}
	}
	for _, a := range [][]string{nil, {"version", "x"}, {"run"}} {
		if IsVersionArg(a) {
			t.Errorf("%v is not a version request", a)
		}
	}
	for _, a := range [][]string{{"help"}, {"-h"}, {"--help", "cleanup"}} {
		if !IsHelpArg(a) {
			t.Errorf("%v is a help request", a)
		}
	}
	if IsHelpArg(nil) || IsHelpArg([]string{"status"}) {
		t.Error("false help request")
	}
}
