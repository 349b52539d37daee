package pmtu

import (
	"context"
	"errors"
	"testing"
)

// fakePath carries sizes up to mtu (after the transform, if any), refuses
// sizes above local at once, and loses the probes lose picks (by probe
// number, from 0).
type fakePath struct {
	mtu, local int
	transform  func(int) int
	lose       func(n, size int) bool
	probes     int
}

func (f *fakePath) Probe(_ context.Context, size int) (Result, error) {
	n := f.probes
	f.probes++
	if f.local > 0 && size > f.local {
		return TooBig, nil
	}
	if f.lose != nil && f.lose(n, size) {
		return Lost, nil
	}
	wire := size
	if f.transform != nil {
		wire = f.transform(size)
	}
	if wire > f.mtu {
		return Lost, nil
	}
	return Acked, nil
}

// wireguardWire is what an inner packet of n bytes becomes on an IPv4
// underlay: padded to a multiple of 16, plus 60 bytes of headers.
func wireguardWire(n int) int { return (n+15)/16*16 + 60 }

func TestSearch(t *testing.T) {
	for _, c := range []struct {
		name      string
		path      fakePath
		ceiling   int
		want      int
		wantErr   error
		maxProbes int
	}{
		{name: "full MTU costs one probe", path: fakePath{mtu: 1500}, ceiling: 1500, want: 1500, maxProbes: 1},
		{name: "1400 hop", path: fakePath{mtu: 1400}, ceiling: 1500, want: 1400, maxProbes: 40},
		{name: "floor only", path: fakePath{mtu: 1280}, ceiling: 1500, want: 1280, maxProbes: 40},
		{name: "below the floor is no path", path: fakePath{mtu: 1200}, ceiling: 1500, wantErr: ErrNoPath},
		{name: "everything lost is no path, not a small MTU", path: fakePath{mtu: 1500, lose: func(int, int) bool { return true }},
			ceiling: 1500, wantErr: ErrNoPath},
		{name: "path dies mid-search", path: fakePath{mtu: 1400, lose: func(n, _ int) bool { return n >= 8 }},
			ceiling: 1500, wantErr: ErrNoPath},
		{name: "two of three probes lost at every size still finds it exactly",
			path:    fakePath{mtu: 1400, lose: func(n, _ int) bool { return n%3 != 2 }},
			ceiling: 1500, want: 1400},
		{name: "ceiling above the local device: refused locally, no retries",
			path: fakePath{mtu: 9000, local: 1500}, ceiling: 9000, want: 1500},
		{name: "inside WireGuard over a 1400 hop: padding to 16",
			path: fakePath{mtu: 1400, transform: wireguardWire}, ceiling: 1440, want: 1328},
		{name: "jumbo", path: fakePath{mtu: 8940}, ceiling: 8940, want: 8940, maxProbes: 1},
	} {
		t.Run(c.name, func(t *testing.T) {
			got, err := Search(context.Background(), &c.path, Floor, c.ceiling, 3)
			if c.wantErr != nil {
				if !errors.Is(err, c.wantErr) {
					t.Fatalf("got %d, %v; want error %v", got, err, c.wantErr)
				}
				return
			}
			if err != nil || got != c.want {
				t.Fatalf("got %d, %v; want %d", got, err, c.want)
			}
			if c.maxProbes > 0 && c.path.probes > c.maxProbes {
				t.Fatalf("%d probes, want at most %d", c.path.probes, c.maxProbes)
			}
		})
	}
}

func TestSearchBounds(t *testing.T) {
	for _, b := range [][3]int{{1500, 1280, 3}, {40, 1500, 3}, {1280, 1500, 0}} {
		if _, err := Search(context.Background(), &fakePath{mtu: 1500}, b[0], b[1], b[2]); err == nil {
			t.Errorf("Search%v accepted", b)
		}
	}
}

func TestSearchCancelled(t *testing.T) {
	ctx, cancel := context.WithCancel(context.Background())
	cancel()
	_, err := Search(ctx, &fakePath{mtu: 1400}, Floor, 1500, 3)
	if !errors.Is(err, context.Canceled) {
		t.Fatalf("err %v, want context.Canceled", err)
	}
}
