package security

import (
	"bytes"
	"encoding/binary"
	"fmt"
	"net"
	"net/netip"
	"sync/atomic"
	"time"

	"github.com/vishvananda/netlink"
	"golang.org/x/sys/unix"

	"github.com/wgcni/wgcni/tests/harness"
)

// Raw packet tools for forging traffic inside namespaces the test made.

func htons(v uint16) uint16 { return v<<8 | v>>8 }

func csum(b []byte) uint16 {
	var s uint32
	for i := 0; i+1 < len(b); i += 2 {
		s += uint32(b[i])<<8 | uint32(b[i+1])
	}
	if len(b)%2 == 1 {
		s += uint32(b[len(b)-1]) << 8
	}
	for s>>16 != 0 {
		s = s&0xffff + s>>16
	}
	return ^uint16(s)
}

// icmpEcho builds an IPv4 packet: ICMP echo request src -> dst carrying
// marker as payload.
func icmpEcho(src, dst netip.Addr, marker string) []byte {
	icmp := make([]byte, 8+len(marker))
	icmp[0] = 8 // echo request
	binary.BigEndian.PutUint16(icmp[4:], 0x5753)
	binary.BigEndian.PutUint16(icmp[6:], 1)
	copy(icmp[8:], marker)
	binary.BigEndian.PutUint16(icmp[2:], csum(icmp))
	ip := make([]byte, 20)
	ip[0] = 0x45
	binary.BigEndian.PutUint16(ip[2:], uint16(20+len(icmp)))
	ip[8] = 64
	ip[9] = unix.IPPROTO_ICMP
	s, d := src.As4(), dst.As4()
	copy(ip[12:], s[:])
	copy(ip[16:], d[:])
	binary.BigEndian.PutUint16(ip[10:], csum(ip))
	return append(ip, icmp...)
}

// sendRawIP sends pkt (a whole IPv4 packet, source included) from inside
// ns through a raw socket: the kernel routes it by destination and keeps
// our forged source address.
func sendRawIP(ns harness.NS, pkt []byte, count int) error {
	return ns.Do(func() error {
		fd, err := unix.Socket(unix.AF_INET, unix.SOCK_RAW, unix.IPPROTO_RAW)
		if err != nil {
			return fmt.Errorf("raw socket: %w", err)
		}
		defer unix.Close(fd)
		var dst [4]byte
		copy(dst[:], pkt[16:20])
		for i := 0; i < count; i++ {
			if err := unix.Sendto(fd, pkt, 0, &unix.SockaddrInet4{Addr: dst}); err != nil {
				return fmt.Errorf("sendto %v: %w", net.IP(dst[:]), err)
			}
			time.Sleep(20 * time.Millisecond)
		}
		return nil
	})
}

// sendFrame sends a whole Ethernet frame out ifname in ns (AF_PACKET).
func sendFrame(ns harness.NS, ifname string, frame []byte, count int) error {
	return ns.Do(func() error {
		l, err := netlink.LinkByName(ifname)
		if err != nil {
			return err
		}
		fd, err := unix.Socket(unix.AF_PACKET, unix.SOCK_RAW, int(htons(unix.ETH_P_ALL)))
		if err != nil {
			return fmt.Errorf("packet socket: %w", err)
		}
		defer unix.Close(fd)
		sa := &unix.SockaddrLinklayer{Ifindex: l.Attrs().Index, Protocol: htons(unix.ETH_P_ALL)}
		for i := 0; i < count; i++ {
			if err := unix.Sendto(fd, frame, 0, sa); err != nil {
				return fmt.Errorf("send frame on %s: %w", ifname, err)
			}
			time.Sleep(20 * time.Millisecond)
		}
		return nil
	})
}

func ethFrame(dst, src net.HardwareAddr, etype uint16, payload []byte) []byte {
	f := make([]byte, 14, 14+len(payload))
	copy(f, dst)
	copy(f[6:], src)
	binary.BigEndian.PutUint16(f[12:], etype)
	return append(f, payload...)
}

func arpReply(senderMAC net.HardwareAddr, senderIP netip.Addr, targetMAC net.HardwareAddr, targetIP netip.Addr) []byte {
	a := make([]byte, 28)
	binary.BigEndian.PutUint16(a[0:], 1)      // Ethernet
	binary.BigEndian.PutUint16(a[2:], 0x0800) // IPv4
	a[4], a[5] = 6, 4
	binary.BigEndian.PutUint16(a[6:], 2) // reply
	copy(a[8:], senderMAC)
	s, t := senderIP.As4(), targetIP.As4()
	copy(a[14:], s[:])
	copy(a[18:], targetMAC)
	copy(a[24:], t[:])
	return a
}

func macOf(ns harness.NS, ifname string) (net.HardwareAddr, error) {
	var mac net.HardwareAddr
	err := ns.Do(func() error {
		l, err := netlink.LinkByName(ifname)
		if err != nil {
			return err
		}
		mac = l.Attrs().HardwareAddr
		return nil
	})
	return mac, err
}

// Sniffer counts frames seen on one interface of a namespace that match.
type Sniffer struct {
	fd    int
	hits  atomic.Int64
	total atomic.Int64
	done  chan struct{}
}

// sniff starts counting frames on ifname in ns for which match is true
// (every direction: what the interface receives and sends).
func sniff(ns harness.NS, ifname string, match func([]byte) bool) (*Sniffer, error) {
	s := &Sniffer{done: make(chan struct{})}
	err := ns.Do(func() error {
		l, err := netlink.LinkByName(ifname)
		if err != nil {
			return err
		}
		fd, err := unix.Socket(unix.AF_PACKET, unix.SOCK_RAW, int(htons(unix.ETH_P_ALL)))
		if err != nil {
			return err
		}
		if err := unix.Bind(fd, &unix.SockaddrLinklayer{Ifindex: l.Attrs().Index, Protocol: htons(unix.ETH_P_ALL)}); err != nil {
			unix.Close(fd)
			return err
		}
		tv := unix.NsecToTimeval((100 * time.Millisecond).Nanoseconds())
		if err := unix.SetsockoptTimeval(fd, unix.SOL_SOCKET, unix.SO_RCVTIMEO, &tv); err != nil {
			unix.Close(fd)
			return err
		}
		s.fd = fd
		return nil
	})
	if err != nil {
		return nil, fmt.Errorf("sniff %s in %s: %w", ifname, ns.Name, err)
	}
	go func() {
		buf := make([]byte, 65536)
		for {
			select {
			case <-s.done:
				unix.Close(s.fd)
				return
			default:
			}
			n, _, err := unix.Recvfrom(s.fd, buf, 0)
			if err != nil || n <= 0 {
				continue
			}
			s.total.Add(1)
			if match(buf[:n]) {
				s.hits.Add(1)
			}
		}
	}()
	return s, nil
}

// Stop ends the capture (after a grace period for frames in flight) and
// returns the number of matching frames.
func (s *Sniffer) Stop() int {
	time.Sleep(300 * time.Millisecond)
	close(s.done)
	return int(s.hits.Load())
}

func contains(marker string) func([]byte) bool {
	m := []byte(marker)
	return func(b []byte) bool { return bytes.Contains(b, m) }
}
