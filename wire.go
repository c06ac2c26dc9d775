package jsonstream

import (
	"encoding/binary"
	"errors"
	"fmt"
)

// wire is jsonstream's own side of the extended query protocol, spoken on
// the socket of a connection between two of lib/pq's exchanges: a portal
// stream (portal.go) writes its messages and reads the server's replies
// here. It reads through the sock, so the framer follows these messages
// as it follows lib/pq's, and no read goes past a ReadyForQuery: once the
// stream's ReadyForQuery is read, nothing of what follows sits in this
// buffer, and lib/pq finds the connection as it left it.
//
// A wire belongs to one connection and is used by one goroutine at a time
// (the portal's wire lock).
type wire struct {
	s *sock
	// in holds what was read; in[r:w] is not yet taken. Message bodies
	// are slices of in, valid until the next message is read.
	in   []byte
	r, w int
	// out is the messages being built, sent by send.
	out []byte
}

// wireBuffer is the size a wire's read buffer starts at; a longer message
// grows it.
const wireBuffer = 32 << 10

// errProtocol is wrapped by the error of a reply that breaks the protocol.
var errProtocol = errors.New("jsonstream: unexpected message from the server")

func newWire(s *sock) *wire {
	return &wire{s: s, in: make([]byte, wireBuffer)}
}

// next returns the next message: its type and body, which stays valid
// until next is called again.
func (w *wire) next() (typ byte, body []byte, err error) {
	if w.w-w.r < 5 {
		if err := w.fill(5); err != nil {
			return 0, nil, err
		}
	}
	typ = w.in[w.r]
	n := binary.BigEndian.Uint32(w.in[w.r+1:])
	if n < 4 || n > maxMessage {
		return 0, nil, fmt.Errorf("%w: a message of type %q claims a length of %d bytes", errProtocol, typ, n)
	}
	total := 1 + int(n)
	if w.w-w.r < total {
		if err := w.fill(total); err != nil {
			return 0, nil, err
		}
	}
	body = w.in[w.r+5 : w.r+total]
	w.r += total
	return typ, body, nil
}

// unread puts back the message next just returned, whose body is body.
func (w *wire) unread(body []byte) { w.r -= 5 + len(body) }

// buffered reports whether a whole message is in the buffer, so that
// reading it waits on nothing.
func (w *wire) buffered() bool {
	if w.w-w.r < 5 {
		return false
	}
	return w.w-w.r >= 1+int(binary.BigEndian.Uint32(w.in[w.r+1:]))
}

// fill reads until in[r:] holds need bytes. Bodies handed out earlier
// may move.
func (w *wire) fill(need int) error {
	if len(w.in)-w.r < need {
		if len(w.in) < need {
			grown := make([]byte, max(need, 2*len(w.in)))
			w.w = copy(grown, w.in[w.r:w.w])
			w.in = grown
		} else {
			w.w = copy(w.in, w.in[w.r:w.w])
		}
		w.r = 0
	}
	for w.w-w.r < need {
		n, err := w.s.read(w.in[w.w:])
		w.w += n
		if err != nil {
			if w.w-w.r >= need {
				// The bytes came with the error: the next read meets it again.
				return nil
			}
			return err
		}
	}
	return nil
}

// detach moves what the buffer holds unread to a new buffer, so that the
// bodies handed out before stay as they are, whatever is read next.
func (w *wire) detach() {
	in := make([]byte, max(wireBuffer, w.w-w.r))
	w.w = copy(in, w.in[w.r:w.w])
	w.r = 0
	w.in = in
}

// bufferedReady counts the ReadyForQuery messages in the buffer past the
// last message read: the framer has seen them already.
func (w *wire) bufferedReady() int {
	n := 0
	for at := w.r; w.w-at >= 5; {
		end := at + 1 + int(binary.BigEndian.Uint32(w.in[at+1:]))
		if end > w.w {
			break // a message not whole: the framer has not ended it
		}
		if w.in[at] == 'Z' {
			n++
		}
		at = end
	}
	return n
}

// restBuffered reports whether the buffer, from the next message on,
// holds whole DataRows and then a whole CommandComplete: the rest of a
// result.
func (w *wire) restBuffered() bool {
	for at := w.r; w.w-at >= 5; {
		end := at + 1 + int(binary.BigEndian.Uint32(w.in[at+1:]))
		if end > w.w {
			return false
		}
		switch w.in[at] {
		case 'D':
		case 'C':
			return true
		default:
			return false
		}
		at = end
	}
	return false
}

// awaitReady reads on until the buffer holds a whole ReadyForQuery,
// taking no message: what is unread stays in order before it. Bodies
// handed out earlier may move.
func (w *wire) awaitReady() error {
	for w.bufferedReady() == 0 {
		if err := w.fill(w.w - w.r + 1); err != nil {
			return err
		}
	}
	return nil
}

// holds reports whether the buffer holds anything past the last message
// read, even part of a message.
func (w *wire) holds() bool { return w.w > w.r }

// leftover returns what the buffer holds past the last message read, and
// empties it.
func (w *wire) leftover() []byte {
	b := w.in[w.r:w.w]
	w.r, w.w = 0, 0
	return b
}

// The messages the frontend sends.

// begin starts a message of type typ in out; end completes it.
func (w *wire) begin(typ byte) int {
	at := len(w.out)
	w.out = append(w.out, typ, 0, 0, 0, 0)
	return at
}

func (w *wire) end(at int) {
	binary.BigEndian.PutUint32(w.out[at+1:], uint32(len(w.out)-at-1))
}

func (w *wire) cstring(s string) {
	w.out = append(w.out, s...)
	w.out = append(w.out, 0)
}

func (w *wire) int16(n int) {
	w.out = binary.BigEndian.AppendUint16(w.out, uint16(n))
}

func (w *wire) int32(n int32) {
	w.out = binary.BigEndian.AppendUint32(w.out, uint32(n))
}

// parse is Parse of the unnamed statement with no parameter types given,
// as lib/pq sends it: the server infers every parameter's type.
func (w *wire) parse(query string) {
	at := w.begin('P')
	w.cstring("")
	w.cstring(query)
	w.int16(0)
	w.end(at)
}

// query is a simple Query, as lib/pq sends it.
func (w *wire) query(q string) {
	at := w.begin('Q')
	w.cstring(q)
	w.end(at)
}

// describe is Describe of the unnamed statement ('S') or portal ('P').
func (w *wire) describe(what byte) {
	at := w.begin('D')
	w.out = append(w.out, what, 0)
	w.end(at)
}

// describeStmt is Describe of the statement called name.
func (w *wire) describeStmt(name string) {
	at := w.begin('D')
	w.out = append(w.out, 'S')
	w.cstring(name)
	w.end(at)
}

// execute is Execute of the unnamed portal for at most rows rows (0: all).
func (w *wire) execute(rows int32) {
	at := w.begin('E')
	w.cstring("")
	w.int32(rows)
	w.end(at)
}

// closePortal is Close of the unnamed portal.
func (w *wire) closePortal() {
	at := w.begin('C')
	w.out = append(w.out, 'P', 0)
	w.end(at)
}

// flush is Flush: the server sends what it has.
func (w *wire) flush() { w.end(w.begin('H')) }

// sync is Sync: the end of the exchange, answered by ReadyForQuery.
func (w *wire) sync() { w.end(w.begin('S')) }

// send writes the messages built and empties out.
func (w *wire) send() error {
	_, err := w.s.write(w.out)
	w.out = w.out[:0]
	return err
}

// bind is Bind of the statement called stmt ("": the unnamed one) to
// the unnamed portal, with the parameters' formats (none: all text) and
// values (nil: NULL), asking for every result column in text format.
func (w *wire) bind(stmt string, formats []int16, values [][]byte) {
	at := w.begin('B')
	w.cstring("")
	w.cstring(stmt)
	w.int16(len(formats))
	for _, f := range formats {
		w.int16(int(f))
	}
	w.int16(len(values))
	for _, v := range values {
		if v == nil {
			w.int32(-1)
			continue
		}
		w.int32(int32(len(v)))
		w.out = append(w.out, v...)
	}
	w.int16(0)
	w.end(at)
}
