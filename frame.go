package jsonstream

import (
	"bytes"
	"encoding/binary"
	"sync/atomic"

	"github.com/lib/pq"
)

// The framer follows the backend's messages in the bytes lib/pq reads:
// each message is a type byte, a 4-byte big-endian length that counts
// itself, and a body. It never parses what it need not: a DataRow's body
// is skipped with one subtraction, so following a result costs a few
// instructions per message. It keeps:
//
//   - whether the connection is idle: the last message the server sent in
//     answer to lib/pq's last write was ReadyForQuery;
//   - the transaction status of that ReadyForQuery: 'I' (idle), 'T' (in a
//     transaction block) or 'E' (in a failed one);
//   - how many bytes of messages arrived since lib/pq's last write;
//   - the last FATAL (or PANIC) ErrorResponse, with which the server ends
//     a session;
//   - the session's TimeZone, from ParameterStatus, by which lib/pq reads
//     timestamptz values (portal streams decode them the same way).
//
// The socket cuts each read just after a ReadyForQuery (sock.Read), so
// that after ReadyForQuery nothing of what follows sits in lib/pq's buffer.
//
// A connection carries messages from its first byte when lib/pq's first
// write is a StartupMessage: plaintext, or TLS that jsonstream's dialer
// established. When lib/pq negotiates TLS itself, the socket sees
// ciphertext, and the framer stays off.

// Transaction statuses of ReadyForQuery.
const (
	txStatusIdle   = 'I'
	txStatusInTx   = 'T'
	txStatusFailed = 'E'
)

// maxMessage is the longest message length the framer takes for one; a
// longer one means the bytes are not messages.
const maxMessage = 1<<30 + 4

// maxErrorCapture bounds the ErrorResponse body the framer keeps to parse;
// a longer one is passed on unparsed.
const maxErrorCapture = 64 << 10

// listenTagLen is the length field of LISTEN's CommandComplete.
const listenTagLen uint32 = 4 + uint32(len("LISTEN")) + 1

// framer follows the backend's message boundaries. The goroutine that
// reads the connection runs scan; the fields other goroutines read (a
// writer during lib/pq's COPY FROM, the query's goroutine deciding an
// ending) are atomic.
type framer struct {
	// on is set while the bytes are protocol messages (by lib/pq's first
	// write, before any read); broken is set when they stopped making
	// sense as messages (a length below 4), after which the framer passes
	// everything on unexamined.
	on     bool
	broken atomic.Bool
	// hdr collects a header split across reads; hdrN is how much of it.
	hdr  [5]byte
	hdrN int
	// typ is the type of the message whose body is passing, body how many
	// of its bytes are still to come.
	typ  byte
	body int
	// writes counts lib/pq's writes; readyAt is writes+1 as it was when
	// the last ReadyForQuery arrived (0 before the first): the connection
	// is idle while no write followed it.
	writes  atomic.Uint64
	readyAt atomic.Uint64
	// owedZ counts the ReadyForQuery messages of an owed end (owed.go)
	// still to come: they answer no write of lib/pq's, and leave readyAt
	// alone.
	owedZ atomic.Int32
	// listening is set once the session ran LISTEN (its CommandComplete
	// passed) or got a notification: a notification may then come at the
	// end of any transaction, which an early Close reads (owed.go).
	listening atomic.Bool
	// status is the transaction status of the last ReadyForQuery, 0
	// before the first.
	status atomic.Uint32
	// read counts the message bytes read, and readAtWrite what read was
	// at lib/pq's last write.
	read, readAtWrite atomic.Int64
	// capture collects the body of an ErrorResponse while it passes;
	// capturing is set while it does.
	capture   []byte
	capturing bool
	// zlen is the body length of the ReadyForQuery passing, and zlast its
	// last byte so far: the transaction status when zlen is 1.
	zlen  int
	zlast byte
	// fatal is the last FATAL or PANIC ErrorResponse the server sent.
	fatal atomic.Pointer[pq.Error]
	// timeZone is the value of the last TimeZone ParameterStatus; nil
	// before the first.
	timeZone atomic.Pointer[string]
	// notUTF8 is set while the server_encoding or the client_encoding
	// the server last reported is not UTF8: a text parameter is then
	// converted between the two, and its bytes may change.
	notUTF8              atomic.Bool
	serverEnc, clientEnc string
}

// wrote notes that lib/pq wrote to the server: the connection is no
// longer idle, and what arrives from now on answers the write.
func (f *framer) wrote() {
	f.writes.Add(1)
	f.readAtWrite.Store(f.read.Load())
}

// idle reports whether the last message that answered lib/pq's last write
// was a ReadyForQuery: the reply is whole, in lib/pq's hands.
func (f *framer) idle() bool {
	at := f.readyAt.Load()
	return at != 0 && at == f.writes.Load()+1
}

// received is how many message bytes arrived since lib/pq's last write:
// how much of the current reply is in.
func (f *framer) received() int64 { return f.read.Load() - f.readAtWrite.Load() }

// following reports whether the framer follows the connection's messages.
func (f *framer) following() bool { return f.on && !f.broken.Load() }

// scan follows the messages in b, the bytes just read, and returns how
// many of them lib/pq may have now: all of b, or the bytes up to and
// including the first ReadyForQuery that ends in b.
func (f *framer) scan(b []byte) int {
	if !f.on || f.broken.Load() {
		return len(b)
	}
	f.read.Add(int64(len(b)))
	i := 0
	for i < len(b) {
		if f.body > 0 {
			k := min(f.body, len(b)-i)
			if f.typ == 'Z' {
				f.zlast = b[i+k-1]
			} else if f.capturing {
				f.keep(b[i : i+k])
			}
			f.body -= k
			i += k
			if f.body == 0 && f.ended() {
				return f.cutAt(b, i)
			}
			continue
		}
		// The usual case: whole messages that need no more than their
		// length (DataRow, CommandComplete, …), one step each.
		for f.hdrN == 0 && len(b)-i >= 5 {
			typ := b[i]
			length := binary.BigEndian.Uint32(b[i+1:])
			if typ == 'E' || typ == 'Z' || typ == 'S' || typ == 'A' || typ == 'C' && length == listenTagLen ||
				length < 4 || length > maxMessage {
				break
			}
			end := i + 1 + int(length)
			if end > len(b) {
				f.typ, f.body, f.capturing = typ, end-len(b), false
				return len(b)
			}
			i = end
		}
		if i == len(b) {
			break
		}
		// A header: whole in b, or in pieces.
		var typ byte
		var length uint32
		if f.hdrN == 0 && len(b)-i >= 5 {
			typ, length = b[i], binary.BigEndian.Uint32(b[i+1:])
			i += 5
		} else {
			k := copy(f.hdr[f.hdrN:], b[i:])
			f.hdrN += k
			i += k
			if f.hdrN < 5 {
				return len(b)
			}
			f.hdrN = 0
			typ, length = f.hdr[0], binary.BigEndian.Uint32(f.hdr[1:])
		}
		if length < 4 || length > maxMessage {
			// Not a message: leave it to lib/pq, which reports it.
			f.broken.Store(true)
			return len(b)
		}
		f.typ, f.body = typ, int(length-4)
		f.capturing = typ == 'E' || typ == 'S' || typ == 'C' && length == listenTagLen
		if typ == 'A' {
			f.listening.Store(true)
		}
		if f.capturing {
			f.capture = f.capture[:0]
		}
		if typ == 'Z' {
			f.zlen = f.body
		}
		if f.body == 0 && f.ended() {
			return f.cutAt(b, i)
		}
	}
	return len(b)
}

// cutAt returns where the read that brought b is cut: just after the
// ReadyForQuery that ends at i. The bytes after it were counted as read;
// they are counted again when lib/pq reads them.
func (f *framer) cutAt(b []byte, i int) int {
	f.read.Add(-int64(len(b) - i))
	return i
}

// keep adds a piece of a captured body, within maxErrorCapture.
func (f *framer) keep(p []byte) {
	if len(f.capture)+len(p) > maxErrorCapture {
		f.capturing = false
		return
	}
	f.capture = append(f.capture, p...)
}

// ended handles the message whose body just ended and reports whether it
// was a ReadyForQuery, after which the read is cut.
func (f *framer) ended() bool {
	switch {
	case f.typ == 'Z':
		if f.zlen == 1 {
			f.status.Store(uint32(f.zlast))
		}
		if f.owedZ.Load() > 0 {
			f.owedZ.Add(-1)
		} else {
			f.readyAt.Store(f.writes.Load() + 1)
		}
		return true
	case !f.capturing:
		return false
	}
	f.capturing = false
	switch f.typ {
	case 'C':
		if string(f.capture) == "LISTEN\x00" {
			f.listening.Store(true)
		}
	case 'E':
		if pe := endsSession(f.capture); pe != nil {
			f.fatal.Store(pe)
		}
	case 'S':
		name, value, ok := parameterStatus(f.capture)
		switch {
		case !ok:
		case name == "TimeZone":
			if old := f.timeZone.Load(); old == nil || *old != value {
				f.timeZone.Store(&value)
			}
		case name == "server_encoding":
			f.serverEnc = value
			f.notUTF8.Store(!isUTF8Name(f.serverEnc) || f.clientEnc != "" && !isUTF8Name(f.clientEnc))
		case name == "client_encoding":
			f.clientEnc = value
			f.notUTF8.Store(!isUTF8Name(f.clientEnc) || f.serverEnc != "" && !isUTF8Name(f.serverEnc))
		}
	}
	return false
}

// txBlock reports whether the last ReadyForQuery put the session inside a
// transaction block (a failed one included), and whether that is known:
// the framer is on and has seen one.
func (f *framer) txBlock() (in, known bool) {
	status := f.status.Load()
	if !f.following() || status == 0 {
		return false, false
	}
	return status != txStatusIdle, true
}

// isStartup reports whether p, lib/pq's first write on a connection, is a
// StartupMessage (protocol 3.x) rather than an SSLRequest, a
// CancelRequest or the first bytes of a TLS handshake.
func isStartup(p []byte) bool {
	return len(p) >= 8 && int(binary.BigEndian.Uint32(p)) == len(p) &&
		binary.BigEndian.Uint16(p[4:]) == 3
}

// isUTF8Name reports whether an encoding's name, as the server reports
// it, is UTF8.
func isUTF8Name(name string) bool { return name == "UTF8" || name == "UTF-8" }

// parameterStatus splits a ParameterStatus body into its name and value.
func parameterStatus(b []byte) (name, value string, ok bool) {
	i := bytes.IndexByte(b, 0)
	if i < 0 {
		return "", "", false
	}
	j := bytes.IndexByte(b[i+1:], 0)
	if j < 0 {
		return "", "", false
	}
	return string(b[:i]), string(b[i+1 : i+1+j]), true
}
