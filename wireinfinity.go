package jsonstream

import (
	"bytes"
	"context"
	"database/sql/driver"
	"encoding/binary"
	"errors"
	"fmt"
	"math"
	"net"
	"sync"
	"sync/atomic"
	"time"

	"github.com/lib/pq"
	"github.com/lib/pq/oid"
)

// pq.EnableInfinityTs changes how lib/pq decodes the timestamps
// "-infinity" and "infinity" (two time.Times instead of the text as a
// []byte) and how it encodes time.Time arguments at or past them. Its
// state is unexported and it can be enabled once, never disabled (a second
// call panics), so the wire mode reads it through lib/pq's exported
// behaviour:
//
//   - enabled or not: lib/pq formats a time.Time argument through
//     formatTS, which pq.GenericArray reaches, and formatTS gives
//     "-infinity" for the earliest time there is exactly when it is
//     enabled, whatever its bounds;
//   - the bounds: lib/pq decodes them itself, from a scripted in-memory
//     connection that answers one query with "-infinity" and "infinity".
//     These are lib/pq's values to the bit: instant, Location pointer and
//     monotonic reading.
//
// Once enabled, the bounds are kept for good. Until then each
// "-infinity" or "infinity" decoded asks again (they are rare), and
// time.Time arguments are formatted by lib/pq through pq.GenericArray
// (exact in either state, about twice the cost of pq.FormatTimestamp), so
// a late EnableInfinityTs, which lib/pq calls undefined, still agrees
// with lib/pq. Should a lib/pq version keep the bounds from being read
// this way, an infinity decodes to an error that says so, never to a
// wrong value (TestWireInfinityTs fails then).

// infinityBounds are the two times of pq.EnableInfinityTs.
type infinityBounds struct{ negative, positive time.Time }

// infinityTs holds the bounds once lib/pq shows them enabled.
var infinityTs struct {
	bounds atomic.Pointer[infinityBounds]
	mu     sync.Mutex // one fetch at a time
}

// earliestTime is the earliest time.Time there is: no bound of
// EnableInfinityTs can precede it, so lib/pq formats it as "-infinity"
// exactly when EnableInfinityTs was called. (time.Unix adds the seconds
// from year 1 to 1970; the subtraction, wrapping, makes the sum the least
// int64.)
var earliestTime = func() time.Time {
	sec := int64(math.MinInt64)
	sec -= 62135596800
	return time.Unix(sec, 0)
}()

// libpqFormatTS is lib/pq's formatTS(t), which pq.GenericArray uses for a
// time.Time element and writes between the array's braces unquoted.
func libpqFormatTS(t time.Time) []byte {
	v, err := pq.GenericArray{A: [1]time.Time{t}}.Value()
	s, ok := v.(string)
	if err != nil || !ok || len(s) < 2 {
		// Not lib/pq v1.12's GenericArray; its formatting without the
		// infinity bounds is the best left.
		return pq.FormatTimestamp(t)
	}
	b := []byte(s[1 : len(s)-1])
	if s == "{-infinity}" || s == "{infinity}" {
		// Enabled: learn the bounds so later times take formatTS's fast
		// path. A failure leaves them to this path, which stays exact.
		_, _ = loadInfinityTs()
	}
	return b
}

// loadInfinityTs returns the bounds of pq.EnableInfinityTs, nil when it
// was not called.
func loadInfinityTs() (*infinityBounds, error) {
	if b := infinityTs.bounds.Load(); b != nil {
		return b, nil
	}
	v, err := pq.GenericArray{A: [1]time.Time{earliestTime}}.Value()
	if err != nil || v != "{-infinity}" {
		return nil, nil // lib/pq formatted it: not enabled
	}
	infinityTs.mu.Lock()
	defer infinityTs.mu.Unlock()
	if b := infinityTs.bounds.Load(); b != nil {
		return b, nil
	}
	b, err := fetchInfinityBounds()
	if err != nil {
		return nil, fmt.Errorf("jsonstream: reading lib/pq's infinity timestamps: %w", err)
	}
	infinityTs.bounds.Store(b)
	return b, nil
}

// fetchInfinityBounds has lib/pq decode "-infinity" and "infinity" as
// timestamps on a connection to a script (infinityScript), and returns
// what it decoded them to.
func fetchInfinityBounds() (*infinityBounds, error) {
	c, err := pq.NewConnectorConfig(pq.Config{
		Host:               "localhost",
		Port:               5432,
		User:               "jsonstream",
		Password:           "jsonstream", // keeps lib/pq from reading a .pgpass
		SSLMode:            pq.SSLModeDisable,
		MinProtocolVersion: pq.ProtocolVersion30,
		MaxProtocolVersion: pq.ProtocolVersion30,
	})
	if err != nil {
		return nil, err
	}
	c.Dialer(scriptDialer{script: infinityScript})
	ctx := context.Background()
	dc, err := c.Connect(ctx)
	if err != nil {
		return nil, err
	}
	defer func() { _ = dc.Close() }()
	q, ok := dc.(driver.QueryerContext)
	if !ok {
		return nil, errors.New("lib/pq's connection cannot query")
	}
	rows, err := q.QueryContext(ctx, "infinity", nil)
	if err != nil {
		return nil, err
	}
	defer func() { _ = rows.Close() }()
	var got [2]time.Time
	dest := make([]driver.Value, 1)
	for i := range got {
		if err := rows.Next(dest); err != nil {
			return nil, err
		}
		t, ok := dest[0].(time.Time)
		if !ok {
			return nil, fmt.Errorf("lib/pq decoded an infinity timestamp as %T", dest[0])
		}
		got[i] = t
	}
	return &infinityBounds{negative: got[0], positive: got[1]}, nil
}

// infinityScript is what the server sends for fetchInfinityBounds: the
// startup's AuthenticationOk and ReadyForQuery, then for the query a
// timestamp column with the rows "-infinity" and "infinity".
var infinityScript = func() []byte {
	msg := func(b []byte, typ byte, body ...[]byte) []byte {
		n := 4
		for _, p := range body {
			n += len(p)
		}
		b = append(b, typ)
		b = binary.BigEndian.AppendUint32(b, uint32(n))
		for _, p := range body {
			b = append(b, p...)
		}
		return b
	}
	row := func(v string) []byte {
		b := binary.BigEndian.AppendUint16(nil, 1)
		b = binary.BigEndian.AppendUint32(b, uint32(len(v)))
		return append(b, v...)
	}
	desc := binary.BigEndian.AppendUint16(nil, 1)
	desc = append(desc, "t\x00"...)
	desc = binary.BigEndian.AppendUint32(desc, 0) // table
	desc = binary.BigEndian.AppendUint16(desc, 0) // column
	desc = binary.BigEndian.AppendUint32(desc, uint32(oid.T_timestamp))
	desc = binary.BigEndian.AppendUint16(desc, 8)
	desc = binary.BigEndian.AppendUint32(desc, math.MaxUint32) // typmod -1
	desc = binary.BigEndian.AppendUint16(desc, 0)              // text

	var b []byte
	b = msg(b, 'R', []byte{0, 0, 0, 0}) // AuthenticationOk
	b = msg(b, 'Z', []byte{'I'})
	b = msg(b, 'T', desc)
	b = msg(b, 'D', row("-infinity"))
	b = msg(b, 'D', row("infinity"))
	b = msg(b, 'C', []byte("SELECT 2\x00"))
	b = msg(b, 'Z', []byte{'I'})
	return b
}()

// scriptDialer is a pq.Dialer whose connections answer with script.
type scriptDialer struct{ script []byte }

// Dial implements pq.Dialer.
func (d scriptDialer) Dial(string, string) (net.Conn, error) {
	return &scriptConn{r: bytes.NewReader(d.script)}, nil
}

// DialTimeout implements pq.Dialer.
func (d scriptDialer) DialTimeout(network, address string, _ time.Duration) (net.Conn, error) {
	return d.Dial(network, address)
}

// scriptConn is a net.Conn whose reads play a script and whose writes
// vanish: lib/pq's side of a conversation known in advance, with no
// goroutine and no socket.
type scriptConn struct{ r *bytes.Reader }

// scriptAddr is the address of a scriptConn's both ends.
var scriptAddr = &net.UnixAddr{Name: "jsonstream-script", Net: "unix"}

// Read implements net.Conn.
func (c *scriptConn) Read(p []byte) (int, error) { return c.r.Read(p) }

// Write implements net.Conn.
func (c *scriptConn) Write(p []byte) (int, error) { return len(p), nil }

// Close implements net.Conn.
func (c *scriptConn) Close() error { return nil }

// LocalAddr implements net.Conn.
func (c *scriptConn) LocalAddr() net.Addr { return scriptAddr }

// RemoteAddr implements net.Conn.
func (c *scriptConn) RemoteAddr() net.Addr { return scriptAddr }

// SetDeadline implements net.Conn; a script never blocks.
func (c *scriptConn) SetDeadline(time.Time) error { return nil }

// SetReadDeadline implements net.Conn.
func (c *scriptConn) SetReadDeadline(time.Time) error { return nil }

// SetWriteDeadline implements net.Conn.
func (c *scriptConn) SetWriteDeadline(time.Time) error { return nil }
