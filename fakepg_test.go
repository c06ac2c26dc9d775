package jsonstream

import (
	"bufio"
	"context"
	"database/sql"
	"database/sql/driver"
	"encoding/binary"
	"errors"
	"fmt"
	"io"
	"net"
	"strconv"
	"sync"
	"testing"

	"github.com/lib/pq"
	"github.com/lib/pq/oid"
	"github.com/stretchr/testify/require"
)

// fakePG is a PostgreSQL backend small enough to script, for running
// lib/pq itself on test-chosen bytes: the wire codec's tests compare what
// lib/pq makes of them with what the codec makes. It speaks protocol 3
// on 127.0.0.1: the startup (with test-chosen ParameterStatus values), the
// simple query, and Parse/Describe/Bind/Execute/Sync/Close; every answer
// comes from the pgScript registered for the query text.
type fakePG struct {
	ln     net.Listener
	params [][2]string // ParameterStatus name and value sent at startup

	mu      sync.Mutex // guards the fields below
	scripts map[string]*pgScript
	binds   map[string][][]byte // the last Bind's values by query text
	conns   map[net.Conn]struct{}
	closed  bool

	wg sync.WaitGroup // the accept loop and one per connection
}

// pgCol is a column of a scripted RowDescription.
type pgCol struct {
	name string
	oid  oid.Oid
	size int16
	mod  int32
}

// pgScript is the server's answer to one query text.
type pgScript struct {
	params []oid.Oid // ParameterDescription of the extended protocol
	cols   []pgCol   // RowDescription; none: NoData (a command)
	rows   [][][]byte
	// err, when set, is the body of the ErrorResponse that answers the
	// simple query or the Parse instead of everything else.
	err []byte
	// rowErr, when set, is the body of an ErrorResponse after the rows,
	// in place of the CommandComplete.
	rowErr []byte
	// notice, when set, is the body of a NoticeResponse sent first.
	notice []byte
}

// newFakePG starts a server that reports TimeZone tz ("" sends none),
// closed with its connections when tb ends.
func newFakePG(tb testing.TB, tz string) *fakePG {
	tb.Helper()
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	require.NoError(tb, err)
	s := &fakePG{
		ln:      ln,
		params:  [][2]string{{"server_version", "16.4"}, {"client_encoding", "UTF8"}},
		scripts: map[string]*pgScript{},
		binds:   map[string][][]byte{},
		conns:   map[net.Conn]struct{}{},
	}
	if tz != "" {
		s.params = append(s.params, [2]string{"TimeZone", tz})
	}
	s.wg.Add(1)
	go s.accept()
	tb.Cleanup(s.close)
	return s
}

// close stops accepting, cuts every connection and waits for their
// goroutines, so that none outlives the test.
func (s *fakePG) close() {
	s.mu.Lock()
	s.closed = true
	_ = s.ln.Close()
	for c := range s.conns {
		_ = c.Close()
	}
	s.mu.Unlock()
	s.wg.Wait()
}

// open returns a pool of lib/pq connections to s, closed when tb ends
// (before s, which was started first). notice, if not nil, gets lib/pq's
// NoticeResponses.
func (s *fakePG) open(tb testing.TB, notice func(*pq.Error)) *sql.DB {
	tb.Helper()
	port := s.ln.Addr().(*net.TCPAddr).Port
	c, err := pq.NewConnector("host=127.0.0.1 port=" + strconv.Itoa(port) +
		" sslmode=disable user=x password=x dbname=x target_session_attrs=any connect_timeout=10")
	require.NoError(tb, err)
	var conn driver.Connector = c
	if notice != nil {
		conn = pq.ConnectorWithNoticeHandler(c, notice)
	}
	db := sql.OpenDB(conn)
	tb.Cleanup(func() { _ = db.Close() })
	return db
}

// script makes sc the answer to q.
func (s *fakePG) script(q string, sc *pgScript) {
	s.mu.Lock()
	s.scripts[q] = sc
	delete(s.binds, q)
	s.mu.Unlock()
}

// forget drops q's script and Bind, so that a fuzz target's many query
// texts do not pile up.
func (s *fakePG) forget(q string) {
	s.mu.Lock()
	delete(s.scripts, q)
	delete(s.binds, q)
	s.mu.Unlock()
}

// bound returns the parameter values of the last Bind of q (a nil value
// is NULL), and whether there was one.
func (s *fakePG) bound(q string) ([][]byte, bool) {
	s.mu.Lock()
	defer s.mu.Unlock()
	b, ok := s.binds[q]
	return b, ok
}

// lookup returns q's script, nil without one.
func (s *fakePG) lookup(q string) *pgScript {
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.scripts[q]
}

// accept serves each connection on a goroutine of its own until the
// listener closes.
func (s *fakePG) accept() {
	defer s.wg.Done()
	for {
		c, err := s.ln.Accept()
		if err != nil {
			return
		}
		s.mu.Lock()
		if s.closed {
			s.mu.Unlock()
			_ = c.Close()
			return
		}
		s.conns[c] = struct{}{}
		s.wg.Add(1)
		s.mu.Unlock()
		go func() {
			defer s.wg.Done()
			_ = s.serve(c)
			_ = c.Close()
			s.mu.Lock()
			delete(s.conns, c)
			s.mu.Unlock()
		}()
	}
}

// pgConn is one client connection's reading and writing.
type pgConn struct {
	r *bufio.Reader
	w *bufio.Writer
}

// send buffers one message of type typ whose body is the parts of body.
func (c *pgConn) send(typ byte, body ...[]byte) {
	n := 4
	for _, b := range body {
		n += len(b)
	}
	_ = c.w.WriteByte(typ)
	var l [4]byte
	binary.BigEndian.PutUint32(l[:], uint32(n))
	_, _ = c.w.Write(l[:])
	for _, b := range body {
		_, _ = c.w.Write(b)
	}
}

// ready sends ReadyForQuery (idle) and flushes: the end of every answer.
func (c *pgConn) ready() error {
	c.send('Z', []byte{'I'})
	return c.w.Flush()
}

// serve plays the server's side of one connection until the client
// terminates or the connection is cut.
func (s *fakePG) serve(nc net.Conn) error {
	c := &pgConn{r: bufio.NewReader(nc), w: bufio.NewWriter(nc)}
	if err := s.startup(c); err != nil {
		return err
	}
	stmts := map[string]string{}   // statement name → query text
	portals := map[string]string{} // portal name → query text
	skipping := false              // after an error, until Sync
	for {
		typ, err := c.r.ReadByte()
		if err != nil {
			return err
		}
		var l [4]byte
		if _, err := io.ReadFull(c.r, l[:]); err != nil {
			return err
		}
		body := make([]byte, binary.BigEndian.Uint32(l[:])-4)
		if _, err := io.ReadFull(c.r, body); err != nil {
			return err
		}
		m := pgMsg(body)
		if skipping && typ != 'S' {
			continue
		}
		switch typ {
		case 'Q':
			q := m.cstring()
			if err := s.simpleQuery(c, q); err != nil {
				return err
			}
		case 'P':
			name, q := m.cstring(), m.cstring()
			stmts[name] = q
			sc := s.lookup(q)
			switch {
			case sc == nil:
				c.send('E', errorBody("SERROR", "C42P01", "Mno script for "+q))
				skipping = true
			case sc.err != nil:
				c.send('E', sc.err)
				skipping = true
			default:
				c.send('1')
			}
		case 'D':
			kind, name := m.byte(), m.cstring()
			q := stmts[name]
			if kind == 'P' {
				q = portals[name]
			}
			sc := s.lookup(q)
			if kind == 'S' {
				pd := binary.BigEndian.AppendUint16(nil, uint16(len(sc.params)))
				for _, o := range sc.params {
					pd = binary.BigEndian.AppendUint32(pd, uint32(o))
				}
				c.send('t', pd)
			}
			if len(sc.cols) == 0 {
				c.send('n')
			} else {
				c.send('T', rowDescription(sc.cols))
			}
		case 'B':
			portal, name := m.cstring(), m.cstring()
			for n := m.uint16(); n > 0; n-- {
				m.uint16() // parameter format
			}
			var vals [][]byte
			for n := m.uint16(); n > 0; n-- {
				l := int32(m.uint32())
				if l < 0 {
					vals = append(vals, nil)
					continue
				}
				vals = append(vals, append([]byte{}, m.next(int(l))...))
			}
			q := stmts[name]
			portals[portal] = q
			s.mu.Lock()
			s.binds[q] = vals
			s.mu.Unlock()
			c.send('2')
		case 'E':
			sc := s.lookup(portals[m.cstring()])
			s.results(c, sc)
		case 'S':
			skipping = false
			if err := c.ready(); err != nil {
				return err
			}
		case 'C':
			c.send('3')
		case 'H':
			if err := c.w.Flush(); err != nil {
				return err
			}
		case 'X':
			return nil
		default:
			return fmt.Errorf("fakePG: unexpected message %q", typ)
		}
	}
}

// startup reads the StartupMessage (refusing TLS) and answers it.
func (s *fakePG) startup(c *pgConn) error {
	for {
		var l [4]byte
		if _, err := io.ReadFull(c.r, l[:]); err != nil {
			return err
		}
		body := make([]byte, binary.BigEndian.Uint32(l[:])-4)
		if _, err := io.ReadFull(c.r, body); err != nil {
			return err
		}
		switch binary.BigEndian.Uint32(body) {
		case 80877103, 80877104: // SSLRequest, GSSENCRequest
			if _, err := c.w.Write([]byte{'N'}); err != nil {
				return err
			}
			if err := c.w.Flush(); err != nil {
				return err
			}
			continue
		case 80877102: // CancelRequest
			return errors.New("fakePG: cancel request")
		}
		break
	}
	c.send('R', []byte{0, 0, 0, 0})
	for _, p := range s.params {
		c.send('S', []byte(p[0]+"\x00"+p[1]+"\x00"))
	}
	c.send('K', []byte{0, 0, 0, 42, 1, 2, 3, 4})
	return c.ready()
}

// simpleQuery answers a Query message from q's script.
func (s *fakePG) simpleQuery(c *pgConn, q string) error {
	sc := s.lookup(q)
	switch {
	case sc == nil:
		c.send('E', errorBody("SERROR", "C42P01", "Mno script for "+q))
	case sc.err != nil:
		if sc.notice != nil {
			c.send('N', sc.notice)
		}
		c.send('E', sc.err)
	default:
		if len(sc.cols) > 0 {
			c.send('T', rowDescription(sc.cols))
		}
		s.results(c, sc)
	}
	return c.ready()
}

// results sends sc's notice, rows and CommandComplete (or row error).
func (s *fakePG) results(c *pgConn, sc *pgScript) {
	if sc.notice != nil {
		c.send('N', sc.notice)
	}
	for _, row := range sc.rows {
		d := binary.BigEndian.AppendUint16(nil, uint16(len(row)))
		for _, v := range row {
			if v == nil {
				d = binary.BigEndian.AppendUint32(d, math32NegOne)
				continue
			}
			d = binary.BigEndian.AppendUint32(d, uint32(len(v)))
			d = append(d, v...)
		}
		c.send('D', d)
	}
	if sc.rowErr != nil {
		c.send('E', sc.rowErr)
		return
	}
	c.send('C', []byte("SELECT "+strconv.Itoa(len(sc.rows))+"\x00"))
}

// math32NegOne is -1 as the uint32 of a NULL's length.
const math32NegOne = 1<<32 - 1

// rowDescription is the body of a RowDescription of cols, in text format.
func rowDescription(cols []pgCol) []byte {
	b := binary.BigEndian.AppendUint16(nil, uint16(len(cols)))
	for _, col := range cols {
		b = append(append(b, col.name...), 0)
		b = binary.BigEndian.AppendUint32(b, 0)
		b = binary.BigEndian.AppendUint16(b, 0)
		b = binary.BigEndian.AppendUint32(b, uint32(col.oid))
		b = binary.BigEndian.AppendUint16(b, uint16(col.size))
		b = binary.BigEndian.AppendUint32(b, uint32(col.mod))
		b = binary.BigEndian.AppendUint16(b, 0)
	}
	return b
}

// pgMsg reads the fields of a client message's body.
type pgMsg []byte

// next takes the next n bytes.
func (m *pgMsg) next(n int) []byte {
	v := (*m)[:n]
	*m = (*m)[n:]
	return v
}

// byte takes the next byte.
func (m *pgMsg) byte() byte { return m.next(1)[0] }

// uint16 takes the next Int16, unsigned.
func (m *pgMsg) uint16() uint16 { return binary.BigEndian.Uint16(m.next(2)) }

// uint32 takes the next Int32, unsigned.
func (m *pgMsg) uint32() uint32 { return binary.BigEndian.Uint32(m.next(4)) }

// cstring takes the next zero-terminated string; lib/pq's messages are
// well formed, so a missing terminator is the test's bug.
func (m *pgMsg) cstring() string {
	for i, c := range *m {
		if c == 0 {
			s := string((*m)[:i])
			*m = (*m)[i+1:]
			return s
		}
	}
	panic("fakePG: string without terminator")
}

// onDriverConn runs f on one of db's lib/pq connections, which database/sql
// discards if f panics (the panic goes on).
func onDriverConn(tb testing.TB, db *sql.DB, f func(dc driver.Conn) error) error {
	tb.Helper()
	ctx := context.Background()
	conn, err := db.Conn(ctx)
	require.NoError(tb, err)
	defer conn.Close()
	return conn.Raw(func(dc any) error { return f(dc.(driver.Conn)) })
}
