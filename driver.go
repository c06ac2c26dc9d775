package jsonstream

import (
	"context"
	"database/sql"
	"database/sql/driver"

	"github.com/lib/pq"
)

// DriverName is the name under which jsonstream registers itself with
// database/sql.
const DriverName = "jsonstream"

func init() {
	sql.Register(DriverName, &Driver{inner: pq.Driver{}, settings: defaultSettings()})
}

// Driver is a driver.Driver that wraps another one. The registered
// "jsonstream" driver wraps lib/pq.
type Driver struct {
	inner    driver.Driver
	settings settings
}

var (
	_ driver.Driver        = (*Driver)(nil)
	_ driver.DriverContext = (*Driver)(nil)
)

// NewDriver wraps inner, with opts as the default settings of its
// connections. Register it with sql.Register, or open a connector with
// OpenConnector and pass it to sql.OpenDB.
func NewDriver(inner driver.Driver, opts ...Option) (*Driver, error) {
	if inner == nil {
		return nil, errNilDriver
	}
	s := defaultSettings()
	if err := s.apply(opts); err != nil {
		return nil, err
	}
	return &Driver{inner: inner, settings: s}, nil
}

// Open implements driver.Driver. database/sql calls OpenConnector instead.
func (d *Driver) Open(dsn string) (driver.Conn, error) {
	c, err := d.OpenConnector(dsn)
	if err != nil {
		return nil, err
	}
	return c.Connect(context.Background())
}

// OpenConnector implements driver.DriverContext: it parses dsn once for a
// sql.DB. jsonstream's DSN parameters (see DSNPrefix) are applied on top of
// the driver's settings and removed; the rest of the DSN goes to the inner
// driver unchanged. With lib/pq inside, the connector is lib/pq's own,
// with NewDialer installed so that streams can be stopped early.
func (d *Driver) OpenConnector(dsn string) (driver.Connector, error) {
	rest, opts, err := splitDSN(dsn)
	if err != nil {
		return nil, newRedactor(dsn).redact(err)
	}
	s := d.settings
	if err := s.apply(opts); err != nil {
		return nil, err
	}
	// Errors from here on may quote the DSN, password and all.
	rd := newRedactor(rest)
	var inner driver.Connector
	switch id := d.inner.(type) {
	case pq.Driver, *pq.Driver:
		cfg, err := pq.NewConfig(rest)
		if err != nil {
			// lib/pq reports a bad DSN when connecting, not from sql.Open,
			// and reads it again for every connection, until it reads
			// (a tls.Config registered later, an environment fixed); so
			// does jsonstream.
			c := newConnector(errConnector{driver: d.inner, err: rd.redact(err)}, s)
			c.driver, c.redactor = d, rd
			c.late = &lateConfig{dsn: rest, settings: s, driver: d, redactor: rd}
			return c, nil
		}
		c := newPQConnector(cfg, s)
		c.driver = d
		c.redactor = rd
		return c, nil
	case driver.DriverContext:
		if inner, err = id.OpenConnector(rest); err != nil {
			return nil, rd.redact(err)
		}
	default:
		inner = dsnConnector{driver: d.inner, dsn: rest}
	}
	c := newConnector(inner, s)
	c.driver = d
	c.redactor = rd
	return c, nil
}

// Unwrap returns the inner driver.
func (d *Driver) Unwrap() driver.Driver { return d.inner }
