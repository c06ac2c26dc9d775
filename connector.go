package jsonstream

import (
	"context"
	"database/sql/driver"
	"errors"
	"fmt"
	"io"
	"maps"
	"reflect"
	"strings"
	"sync"

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
	// tls is how jsonstream's dialer negotiates TLS (tls.go); nil when
	// lib/pq does, or when there is none.
	tls *tlsPlan
	// outer is what Unwrap returns when tls is set: a lib/pq connector
	// with the caller's settings, apart from inner, whose sslmode=disable
	// relies on jsonstream's dialer and must not be handed out.
	outer driver.Connector
	// ownWire is set when inner is lib/pq with jsonstream's dialer and
	// settings jsonstream read (a DSN, a pq.Config): portal streams can
	// run on its connections. binaryParams is its binary_parameters, and
	// textResults its disable_prepared_binary_result.
	ownWire, binaryParams, textResults bool
	// late is set when lib/pq could not read the DSN at sql.Open: Connect
	// reads it again, and connects through what it makes of it once it
	// reads.
	late *lateConfig
}

// lateConfig is a DSN for lib/pq that did not read at sql.Open, read again
// at each Connect until it does, as lib/pq reads its DSN for every
// connection; the Connector it then makes serves every later Connect.
type lateConfig struct {
	dsn      string
	settings settings
	driver   *Driver
	redactor *redactor
	mu       sync.Mutex
	ready    *Connector
}

// connector returns the Connector for the DSN, or lib/pq's error for it.
func (l *lateConfig) connector() (*Connector, error) {
	l.mu.Lock()
	defer l.mu.Unlock()
	if l.ready != nil {
		return l.ready, nil
	}
	cfg, err := pq.NewConfig(l.dsn)
	if err != nil {
		return nil, l.redactor.redact(err)
	}
	c := newPQConnector(cfg, l.settings)
	c.driver, c.redactor = l.driver, l.redactor
	l.ready = c
	return c, nil
}

// resolved returns the late DSN's Connector, if it has one by now.
func (l *lateConfig) resolved() *Connector {
	l.mu.Lock()
	defer l.mu.Unlock()
	return l.ready
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

// NewConnectorConfig returns a Connector for lib/pq with the connection
// settings cfg (from pq.NewConfig, or built by hand), as sql.Open with a
// DSN gives: jsonstream's dialer negotiates TLS as lib/pq would for cfg,
// so that jsonstream sees the protocol's messages on TLS connections too,
// and lib/pq does everything else. See the README's "How it works".
func NewConnectorConfig(cfg pq.Config, opts ...Option) (*Connector, error) {
	// pq.NewConfig keeps the DSN's jsonstream_ parameters in Runtime, for
	// the server: they are jsonstream's, applied before opts.
	cfg, dsnOpts, err := runtimeOptions(cfg)
	if err != nil {
		return nil, err
	}
	s := defaultSettings()
	if err := s.apply(append(dsnOpts, opts...)); err != nil {
		return nil, err
	}
	return newPQConnector(cfg, s), nil
}

// newPQConnector is a Connector for lib/pq with cfg and the settings s.
func newPQConnector(cfg pq.Config, s settings) *Connector {
	inner, plan := planTLS(cfg)
	pc, _ := pq.NewConnectorConfig(inner) // never fails in v1.12.3
	pc.Dialer(dialer{base: netDialer{}, tls: plan})
	c := newConnector(pc, s)
	c.tls = plan
	c.ownWire, c.binaryParams, c.textResults = true, cfg.BinaryParameters, cfg.DisablePreparedBinaryResult
	if plan != nil {
		outer, _ := pq.NewConnectorConfig(cfg)
		outer.Dialer(NewDialer(nil))
		c.outer = outer
	}
	return c
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
	if c.late != nil {
		lc, err := c.late.connector()
		if err != nil {
			return nil, err
		}
		return lc.Connect(ctx)
	}
	var sock socketSlot
	ic, err := c.inner.Connect(context.WithValue(ctx, socketKey{}, &sock))
	if err != nil {
		return nil, c.redactor.redact(err)
	}

	cn := newConn(ic, &c.settings, sock.conn.Load())
	cn.connector = c
	if c.ownWire && cn.sock != nil && isPQConn(ic) {
		cn.wireOK, cn.binaryParams, cn.textResults = true, c.binaryParams, c.textResults
	}
	return cn, nil
}

// Driver implements driver.Connector: it returns the jsonstream Driver that
// wraps the inner connector's driver.
func (c *Connector) Driver() driver.Driver { return c.driver }

// Close closes the inner connector if it is an io.Closer; sql.DB.Close
// calls it.
func (c *Connector) Close() error {
	if c.late != nil {
		if lc := c.late.resolved(); lc != nil {
			return lc.Close()
		}
	}
	if cl, ok := c.inner.(io.Closer); ok {
		return cl.Close()
	}
	return nil
}

// Unwrap returns the inner connector. When jsonstream's dialer negotiates
// TLS (NewConnectorConfig, sql.Open), it is a lib/pq connector of its own
// with the same settings, which negotiates TLS itself: the one jsonstream
// connects through is told sslmode=disable, and a dialer installed on it
// could send a connection unencrypted.
func (c *Connector) Unwrap() driver.Connector {
	if c.late != nil {
		if lc := c.late.resolved(); lc != nil {
			return lc.Unwrap()
		}
	}
	if c.outer != nil {
		return c.outer
	}
	return c.inner
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

// isPQConn reports whether c is a lib/pq connection, whose transaction
// status a Ping brings up to date (portal.go's handBack).
func isPQConn(c driver.Conn) bool {
	t := reflect.TypeOf(c)
	return t.Kind() == reflect.Pointer && t.Elem().PkgPath() == "github.com/lib/pq" && t.Elem().Name() == "conn"
}

// runtimeOptions takes jsonstream's parameters out of a lib/pq config's
// Runtime (which holds the parameters lib/pq does not know, to send to
// the server): it returns the options they stand for and a Runtime
// without them, leaving cfg's own map as it was.
func runtimeOptions(cfg pq.Config) (pq.Config, []Option, error) {
	var opts []Option
	var rest map[string]string
	for name, value := range cfg.Runtime {
		if !strings.HasPrefix(name, DSNPrefix) {
			continue
		}
		opt, err := dsnOption(name, value)
		if err != nil {
			return cfg, nil, err
		}
		opts = append(opts, opt)
		if rest == nil {
			rest = maps.Clone(cfg.Runtime)
		}
		delete(rest, name)
	}
	if rest != nil {
		cfg.Runtime = rest
	}
	return cfg, opts, nil
}
