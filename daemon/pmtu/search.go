package pmtu

import (
	"context"
	"errors"
	"fmt"
)

// Result is the outcome of one probe.
type Result int

const (
	// Acked: the probe arrived and its ack came back.
	Acked Result = iota
	// Lost: no ack within the timeout (too big somewhere on the path, or
	// plain loss: the search tells them apart).
	Lost
	// TooBig: the local stack refused the size (larger than the outgoing
	// device's MTU); no need to retry.
	TooBig
)

// Path sends one probe of an IP packet size (headers included) and reports
// what became of it.
type Path interface {
	Probe(ctx context.Context, size int) (Result, error)
}

// Floor is the smallest path MTU searched: IPv6's minimum link MTU, which
// every IPv6 path carries and IPv4 underlays in practice do too.
const Floor = 1280

// ErrNoPath means even floor-size probes went unanswered: the peer is
// unreachable (or not answering), not a small-MTU path.
var ErrNoPath = errors.New("no probe answered, not even at the floor size")

// Search returns the largest size in [floor, ceiling] the path carries.
// Every size it reports was acknowledged; a size counts as too big only
// after tries probes at it were lost and a floor-size probe right after
// was answered (else the path is losing everything, and Search returns
// ErrNoPath instead of a made-up MTU). It probes the ceiling first, so a
// path that carries the device MTU costs one probe; otherwise a binary
// search: about log2(ceiling-floor) more sizes.
func Search(ctx context.Context, p Path, floor, ceiling, tries int) (int, error) {
	if floor > ceiling || floor < 68 || tries < 1 {
		return 0, fmt.Errorf("search bounds [%d, %d] with %d tries: need 68 <= floor <= ceiling and tries >= 1", floor, ceiling, tries)
	}
	s := searcher{p: p, floor: floor, tries: tries}
	ok, err := s.fits(ctx, ceiling)
	if err != nil {
		return 0, err
	}
	if ok {
		return ceiling, nil
	}
	if floor == ceiling {
		return 0, ErrNoPath
	}
	// lo is proven to fit, hi proven not to.
	lo, hi := floor, ceiling
	if ok, err := s.fits(ctx, floor); err != nil {
		return 0, err
	} else if !ok {
		return 0, ErrNoPath
	}
	for hi-lo > 1 {
		mid := lo + (hi-lo)/2
		ok, err := s.fits(ctx, mid)
		if err != nil {
			return 0, err
		}
		if ok {
			lo = mid
		} else {
			hi = mid
		}
	}
	return lo, nil
}

type searcher struct {
	p     Path
	floor int
	tries int
}

// fits reports whether size is carried. A size whose probes were all lost
// is checked against loss: a floor probe must then be answered, or the
// path is down (ErrNoPath).
func (s searcher) fits(ctx context.Context, size int) (bool, error) {
	r, err := s.try(ctx, size)
	if err != nil || r != Lost || size == s.floor {
		return r == Acked, err
	}
	f, err := s.try(ctx, s.floor)
	if err != nil {
		return false, err
	}
	if f != Acked {
		return false, fmt.Errorf("size %d: %w (path lost everything while searching)", size, ErrNoPath)
	}
	return false, nil
}

// try probes size up to tries times; Lost only when every probe was.
func (s searcher) try(ctx context.Context, size int) (Result, error) {
	for range s.tries {
		r, err := s.p.Probe(ctx, size)
		if err != nil {
			return Lost, fmt.Errorf("probe %d bytes: %w", size, err)
		}
		if r != Lost {
			return r, nil
		}
		if err := ctx.Err(); err != nil {
			return Lost, err
		}
	}
	return Lost, nil
}
