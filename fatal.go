package jsonstream

import (
	"database/sql/driver"
	"encoding/binary"
	"errors"

	"github.com/lib/pq"
	"github.com/lib/pq/pqerror"
)

// When the server ends a session (a terminated backend, a recovery
// conflict on a standby, idle_in_transaction_session_timeout), it sends a
// FATAL ErrorResponse and closes the connection; lib/pq reports every
// FATAL as driver.ErrBadConn, and the reason is lost. jsonstream keeps it
// as it passes to lib/pq: the framer (frame.go) parses every
// ErrorResponse's severity, on plaintext connections and on TLS that
// jsonstream's dialer established. When lib/pq negotiated TLS itself, the
// socket carries ciphertext, and the stream's error stays lib/pq's.

// SessionEndedError is the error of a stream whose session the server
// ended while it ran. It wraps the server's FATAL error, for
// errors.As(err, **pq.Error), and driver.ErrBadConn, so that database/sql
// discards the connection.
type SessionEndedError struct {
	// Server is the server's FATAL error, with its SQLSTATE and text.
	Server *pq.Error
}

// Error implements error.
func (e *SessionEndedError) Error() string {
	return "jsonstream: the server ended the session: " + e.Server.Error()
}

// Unwrap returns the server's error and driver.ErrBadConn.
func (e *SessionEndedError) Unwrap() []error { return []error{e.Server, driver.ErrBadConn} }

// sessionError returns err, an error of the inner driver on c, as a
// SessionEndedError when it is driver.ErrBadConn and the server ended the
// session with a FATAL error.
func sessionError(err error, c *conn) error {
	if c.sock == nil || !errors.Is(err, driver.ErrBadConn) {
		return err
	}
	pe := c.sock.fatal()
	if pe == nil {
		return err
	}
	c.discard()
	return &SessionEndedError{Server: pe}
}

// fatal returns the FATAL error with which the server ended the session,
// if it sent one: the framer's when it follows the connection, else the
// one that ends the socket's last read.
func (s *sock) fatal() *pq.Error {
	if s.frames.following() {
		return s.frames.fatal.Load()
	}
	return lastFatal(s.last)
}

// heldFatal returns the FATAL error that ends what the socket holds past
// a ReadyForQuery (sock.Read), if any: a FATAL sent while the connection
// was idle that arrived with the ReadyForQuery before it.
func (s *sock) heldFatal() *pq.Error {
	if s.heldOff >= len(s.held) {
		return nil
	}
	return lastFatal(s.held[s.heldOff:])
}

// lastFatal returns the FATAL ErrorResponse that ends b, or nil.
func lastFatal(b []byte) *pq.Error {
	for i := len(b) - 5; i >= 0; i-- {
		if b[i] != 'E' || int(binary.BigEndian.Uint32(b[i+1:i+5])) != len(b)-i-1 {
			continue
		}
		if pe := endsSession(b[i+5:]); pe != nil {
			return pe
		}
	}
	return nil
}

// endsSession returns the error of an ErrorResponse's body when it ends
// the session (FATAL or PANIC), nil otherwise. The severity is read from
// the field V, which the server never translates (PostgreSQL 9.6 and
// later), and from S, which lib/pq keeps, only without V: under a
// translated lc_messages, S says "ВАЖНО" for FATAL.
func endsSession(b []byte) *pq.Error {
	pe, severity := parseErrorFields(b)
	if pe == nil {
		return nil
	}
	if severity == "" {
		severity = pe.Severity
	}
	if severity != pqerror.SeverityFatal && severity != pqerror.SeverityPanic {
		return nil
	}
	return pe
}

// parseErrorFields parses the fields of an ErrorResponse's body as lib/pq
// does, and returns its untranslated severity (V) beside; nil unless b is
// well formed with a severity and a code.
func parseErrorFields(b []byte) (*pq.Error, string) {
	pe, unlocalized, rest, ok := scanErrorFields(b)
	if !ok || len(rest) != 0 || pe.Severity == "" || len(pe.Code) != 5 {
		return nil, ""
	}
	return pe, unlocalized
}

// scanErrorFields reads the fields of an ErrorResponse's (or a
// NoticeResponse's) body into a pq.Error as lib/pq's parseError does, up
// to the zero byte that ends them, and returns the untranslated severity
// (V, which lib/pq ignores) and what follows that zero byte beside. ok is
// false when b ends before it; pe then holds the fields read until there.
func scanErrorFields(b []byte) (pe *pq.Error, unlocalized string, rest []byte, ok bool) {
	pe = new(pq.Error)
	for len(b) > 0 && b[0] != 0 {
		t := b[0]
		end := 1
		for end < len(b) && b[end] != 0 {
			end++
		}
		if end == len(b) {
			return pe, unlocalized, nil, false
		}
		v := string(b[1:end])
		b = b[end+1:]
		switch t {
		case 'S':
			pe.Severity = v
		case 'V':
			unlocalized = v
		case 'C':
			pe.Code = pqerror.Code(v)
		case 'M':
			pe.Message = v
		case 'D':
			pe.Detail = v
		case 'H':
			pe.Hint = v
		case 'P':
			pe.Position = v
		case 'p':
			pe.InternalPosition = v
		case 'q':
			pe.InternalQuery = v
		case 'W':
			pe.Where = v
		case 's':
			pe.Schema = v
		case 't':
			pe.Table = v
		case 'c':
			pe.Column = v
		case 'd':
			pe.DataTypeName = v
		case 'n':
			pe.Constraint = v
		case 'F':
			pe.File = v
		case 'L':
			pe.Line = v
		case 'R':
			pe.Routine = v
		}
	}
	if len(b) == 0 {
		return pe, unlocalized, nil, false
	}
	return pe, unlocalized, b[1:], true
}
