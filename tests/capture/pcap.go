package capture

import (
	"encoding/binary"
	"fmt"
	"io"
)

// WritePcap writes packets as a classic pcap file (readable by tcpdump -r
// and wireshark). All packets must share one link type.
func WritePcap(w io.Writer, pkts []Packet) error {
	linkType := uint32(1) // LINKTYPE_ETHERNET
	if len(pkts) > 0 && pkts[0].Link == LinkRawIP {
		linkType = 101 // LINKTYPE_RAW
	}
	hdr := make([]byte, 24)
	binary.LittleEndian.PutUint32(hdr[0:], 0xa1b2c3d4)
	binary.LittleEndian.PutUint16(hdr[4:], 2)
	binary.LittleEndian.PutUint16(hdr[6:], 4)
	binary.LittleEndian.PutUint32(hdr[16:], 65535)
	binary.LittleEndian.PutUint32(hdr[20:], linkType)
	if _, err := w.Write(hdr); err != nil {
		return fmt.Errorf("write pcap header: %w", err)
	}
	rec := make([]byte, 16)
	for i, p := range pkts {
		if (p.Link == LinkRawIP) != (linkType == 101) {
			return fmt.Errorf("write pcap: packet %d has a different link type", i)
		}
		binary.LittleEndian.PutUint32(rec[0:], uint32(p.Time.Unix()))
		binary.LittleEndian.PutUint32(rec[4:], uint32(p.Time.Nanosecond()/1000))
		binary.LittleEndian.PutUint32(rec[8:], uint32(len(p.Data)))
		binary.LittleEndian.PutUint32(rec[12:], uint32(p.Len))
		if _, err := w.Write(rec); err != nil {
			return fmt.Errorf("write pcap record %d: %w", i, err)
		}
		if _, err := w.Write(p.Data); err != nil {
			return fmt.Errorf("write pcap record %d: %w", i, err)
		}
	}
	return nil
}
