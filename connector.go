package jsonstream

import (
	"context"
	"database/sql/driver"
	"errors"
	"fmt"
	"io"
	"net"
	"sync/atomic"
	"time"

	"github.com/lib/pq"
)

// Connector is a driver.Connector that wraps another one: every
// connection it opens is a jsonstream connection, whose rows are streams
// with a Controller. Use it with sql.OpenDB.
type Connector struct {
	inner    driver.Connector
	driver   *Driver
	settings settings
	// redactor masks the DSN's passwords in the errors of Connect.
	redactor *redactor
}

var (
	_ driver.Connector = (*Connector)(nil)
	_ io.Closer        = (*Connector)(nil)
)

// NewConnector wraps inner, for example a connector from pq.NewConnector,
// pq.NewConnectorConfig or pq.ConnectorWithNoticeHandler, or any other
// driver's connector.
//
// Fast early Close, Cancel, the pause timeout and context cancellation of a
// stalled stream cut the connection jsonstream dialed. When inner is a
// *pq.Connector, NewConnector installs jsonstream's dialer on it
// (NewDialer(nil); install NewDialer(yourDialer) yourself afterwards to
// keep a dialer of your own). For a lib/pq connector inside another one,
// such as pq.ConnectorWithNoticeHandler, install NewDialer on the
// *pq.Connector before wrapping it. Without that dialer, or with another
// driver, jsonstream cannot cut the connection: Close then reads the rest
// of the result as the inner driver does, and a failed stream ends on the
// client side only.
func NewConnector(inner driver.Connector, opts ...Option) (*Connector, error) {
	if inner == nil {
		return nil, fmt.Errorf("%w: NewConnector(nil)", ErrInvalidOption)
	}
	s := defaultSettings()
	if err := s.apply(opts); err != nil {
		return nil, err
	}
	if pc, ok := inner.(*pq.Connector); ok {
		pc.Dialer(NewDialer(nil))
	}
	return newConnector(inner, s), nil
}

func newConnector(inner driver.Connector, s settings) *Connector {
	return &Connector{
		inner:    inner,
		settings: s,
		driver:   &Driver{inner: inner.Driver(), settings: s},
		redactor: newRedactor(""),
	}
}

// Connect implements driver.Connector.
func (c *Connector) Connect(ctx context.Context) (driver.Conn, error) {
	var sock socketSlot
	ic, err := c.inner.Connect(context.WithValue(ctx, socketKey{}, &sock))
	if err != nil {
		return nil, c.redactor.redact(err)
	}
	return newConn(ic, &c.settings, sock.conn.Load()), nil
}

// Driver implements driver.Connector: it returns the jsonstream Driver that
// wraps the inner connector's driver.
func (c *Connector) Driver() driver.Driver { return c.driver }

// Close closes the inner connector if it is an io.Closer; sql.DB.Close
// calls it.
func (c *Connector) Close() error {
	if cl, ok := c.inner.(io.Closer); ok {
		return cl.Close()
	}
	return nil
}

// Unwrap returns the inner connector.
func (c *Connector) Unwrap() driver.Connector { return c.inner }

// socketKey is the context key under which Connect passes a socketSlot to
// the dialer.
type socketKey struct{}

// socketSlot receives the network connection the dialer made for one
// Connect. When lib/pq tries several hosts the last dial wins, which is
// the one it keeps.
type socketSlot struct{ conn atomic.Pointer[sock] }

// NewDialer returns a pq.Dialer that dials with base (a net.Dialer when
// base is nil) and lets the jsonstream Connector that asked for the
// connection cut it: that is how Close stops a stream early and how
// Cancel, the pause timeout and context cancellation stop the server-side
// query. Install it with (*pq.Connector).Dialer.
func NewDialer(base pq.Dialer) pq.Dialer {
	if base == nil {
		base = netDialer{}
	}
	return dialer{base: base}
}

type dialer struct{ base pq.Dialer }

// Dial implements pq.Dialer.
func (d dialer) Dial(network, address string) (net.Conn, error) {
	return d.base.Dial(network, address)
}

// DialTimeout implements pq.Dialer.
func (d dialer) DialTimeout(network, address string, timeout time.Duration) (net.Conn, error) {
	return d.base.DialTimeout(network, address, timeout)
}

// DialContext implements pq.DialerContext; lib/pq prefers it and passes
// Connect's context, which carries the slot.
func (d dialer) DialContext(ctx context.Context, network, address string) (net.Conn, error) {
	var c net.Conn
	var err error
	if dc, ok := d.base.(pq.DialerContext); ok {
		c, err = dc.DialContext(ctx, network, address)
	} else if deadline, ok := ctx.Deadline(); ok {
		c, err = d.base.DialTimeout(network, address, time.Until(deadline))
	} else {
		c, err = d.base.Dial(network, address)
	}
	if err != nil {
		return nil, err
	}
	if slot, ok := ctx.Value(socketKey{}).(*socketSlot); ok {
		s := &sock{Conn: c}
		slot.conn.Store(s)
		return s, nil
	}
	return c, nil
}

// netDialer is the base of NewDialer(nil): plain net.Dialer dialing.
type netDialer struct{ d net.Dialer }

// Dial implements pq.Dialer.
func (n netDialer) Dial(network, address string) (net.Conn, error) {
	return n.d.Dial(network, address)
}

// DialTimeout implements pq.Dialer.
func (n netDialer) DialTimeout(network, address string, timeout time.Duration) (net.Conn, error) {
	return net.DialTimeout(network, address, timeout)
}

// DialContext implements pq.DialerContext.
func (n netDialer) DialContext(ctx context.Context, network, address string) (net.Conn, error) {
	return n.d.DialContext(ctx, network, address)
}

// dsnConnector opens connections by DSN through a driver that lacks
// driver.DriverContext, as database/sql does for such drivers.
type dsnConnector struct {
	driver driver.Driver
	dsn    string
}

// Connect implements driver.Connector.
func (d dsnConnector) Connect(context.Context) (driver.Conn, error) { return d.driver.Open(d.dsn) }

// Driver implements driver.Connector.
func (d dsnConnector) Driver() driver.Driver { return d.driver }

// errConnector fails every Connect with the error that its DSN gave.
type errConnector struct {
	driver driver.Driver
	err    error
}

// Connect implements driver.Connector.
func (e errConnector) Connect(context.Context) (driver.Conn, error) { return nil, e.err }

// Driver implements driver.Connector.
func (e errConnector) Driver() driver.Driver { return e.driver }

var errNilDriver = errors.New("jsonstream: NewDriver(nil)")
