package jsonstream

import (
	"database/sql/driver"
	"errors"
	"fmt"
	"math"
	"reflect"
	"strconv"
	"sync"
	"sync/atomic"
	"time"
	"unsafe"

	"github.com/lib/pq"
	"github.com/lib/pq/oid"
)

// The wire mode speaks the extended query protocol on lib/pq's socket
// itself and asks for every result column in text format. database/sql
// must still see what lib/pq would have given it: the same driver.Values,
// the same column metadata, the same errors. This file is that codec;
// wirevalue_test.go proves it against lib/pq through a fake server.
// What is ported from lib/pq's encode.go is in wirevalue_libpq.go, the
// handling of pq.EnableInfinityTs in wireinfinity.go.

// pgField is one column of a RowDescription.
type pgField struct {
	name string
	oid  oid.Oid // the column's type
	size int16   // the type's length (typlen) as RowDescription gives it
	mod  int32   // the type modifier
}

// headerSize is the varlena header that PostgreSQL counts in the type
// modifiers of varchar, bpchar and numeric; lib/pq subtracts it.
const headerSize = 4

// errEmptyBool is decode's error for a bool column whose text is empty.
// lib/pq indexes the text's first byte and panics there; the server never
// sends such a value, and a driver must not panic on what it reads.
var errEmptyBool = errors.New("jsonstream: empty text for a bool column")

// decode turns b, a non-NULL value in text format, into the driver.Value
// lib/pq's textDecode gives for the column's type. loc is the session's
// TimeZone location as lib/pq tracks it: timeZoneLocation of the last
// TimeZone ParameterStatus (at startup or after a SET), nil when the
// server sent none. The values, errors and error texts are lib/pq's, and
// so is the value lib/pq leaves beside an error (the clamped int of an
// overflow, the time pq.ParseTimestamp got to). A type lib/pq leaves
// undecoded comes back as b itself, aliasing it as lib/pq's value aliases
// its read buffer; everything else is a copy. The one difference: an
// empty bool text is errEmptyBool where lib/pq panics.
func (f *pgField) decode(loc *time.Location, b []byte) (driver.Value, error) {
	switch f.oid {
	case oid.T_char, oid.T_bpchar, oid.T_varchar, oid.T_text:
		return string(b), nil
	case oid.T_bytea:
		v, err := parseBytea(b)
		if err != nil {
			err = errors.New("pq: " + err.Error())
		}
		return v, err
	case oid.T_timestamptz:
		return parseTS(loc, b)
	case oid.T_timestamp, oid.T_date:
		return parseTS(nil, b)
	case oid.T_time, oid.T_timetz:
		return parseTime(f.oid, view(b))
	case oid.T_bool:
		if len(b) == 0 {
			return nil, errEmptyBool
		}
		return b[0] == 't', nil
	case oid.T_int8, oid.T_int4, oid.T_int2:
		i, err := parseInt(b)
		if err != nil {
			err = errors.New("pq: " + err.Error())
		}
		return i, err
	case oid.T_float4, oid.T_float8:
		// float4 too is parsed as 64 bits, as lib/pq does: a float32
		// parse widened to float64 would not print as the server sent it.
		v, err := strconv.ParseFloat(view(b), 64)
		if err != nil {
			err = errors.New("pq: " + err.Error())
		}
		return v, err
	}
	if b == nil {
		// lib/pq's empty value is a slice of its message, never nil.
		return []byte{}, nil
	}
	return b, nil
}

// view is b as a string without a copy, for the parsers decode calls: none
// keeps its input past the call (their errors are flattened into new
// texts before decode returns them), so the bytes, which belong to a
// reused read buffer, are never seen through the string afterwards. It
// saves the copy lib/pq's string(s) makes per value.
func view(b []byte) string {
	return unsafe.String(unsafe.SliceData(b), len(b))
}

// parseInt is strconv.ParseInt(b, 10, 64), with its results and errors,
// and a fast path for the plain short numbers that are most of what an
// integer column holds: up to 18 characters cannot overflow an int64.
func parseInt(b []byte) (int64, error) {
	if n := len(b); n > 0 && n <= 18 {
		i, neg := 0, false
		switch b[0] {
		case '-':
			i, neg = 1, true
		case '+':
			i = 1
		}
		if i < n {
			var v int64
			for ; i < n; i++ {
				c := b[i] - '0'
				if c > 9 {
					return strconv.ParseInt(view(b), 10, 64)
				}
				v = v*10 + int64(c)
			}
			if neg {
				v = -v
			}
			return v, nil
		}
	}
	return strconv.ParseInt(view(b), 10, 64)
}

// parseTS is lib/pq's parseTS: "-infinity" and "infinity" are the bounds
// of pq.EnableInfinityTs once it was called and otherwise the text as a
// []byte (a copy); everything else is pq.ParseTimestamp's, in loc.
func parseTS(loc *time.Location, b []byte) (driver.Value, error) {
	switch string(b) {
	case "-infinity", "infinity":
		bounds, err := loadInfinityTs()
		if err != nil {
			return nil, err
		}
		if bounds == nil {
			c := make([]byte, len(b))
			copy(c, b)
			return c, nil
		}
		if b[0] == '-' {
			return bounds.negative, nil
		}
		return bounds.positive, nil
	}
	t, err := pq.ParseTimestamp(loc, view(b))
	if err != nil {
		err = errors.New("pq: " + err.Error())
	}
	return t, err
}

// encodeArg encodes one argument as lib/pq's encode does for the parameter
// type typ (the server's inferred type from ParameterDescription, 0 when
// unknown): text format, bytea in hex when typ is bytea. A nil result is
// SQL NULL: for a nil v, and for a nil []byte as lib/pq treats it; an
// empty non-nil result is an empty value. A []byte comes back as itself
// for any other typ, as lib/pq sends it. v is a value after lib/pq's
// CheckNamedValue and database/sql's conversion.
func encodeArg(v driver.Value, typ oid.Oid) ([]byte, error) {
	switch v := v.(type) {
	case nil:
		return nil, nil
	case int64:
		return strconv.AppendInt(nil, v, 10), nil
	case float64:
		return strconv.AppendFloat(nil, v, 'f', -1, 64), nil
	case []byte:
		if v == nil {
			return nil, nil
		}
		if typ == oid.T_bytea {
			return encodeBytea(v), nil
		}
		return v, nil
	case string:
		if typ == oid.T_bytea {
			return encodeBytea([]byte(v)), nil
		}
		return []byte(v), nil
	case bool:
		return strconv.AppendBool(nil, v), nil
	case time.Time:
		return formatTS(v), nil
	default:
		return nil, fmt.Errorf("pq: encode: unknown type for %T", v)
	}
}

// utcNames are the TimeZone values lib/pq maps to time.UTC without asking
// the time zone database.
var utcNames = [...]string{"UTC", "Etc/UTC", "Etc/Universal", "Etc/Zulu", "Etc/UCT"}

// tzCacheMax bounds the TimeZone values timeZoneLocation remembers: a
// server can send any text, and a process talks to few time zones.
const tzCacheMax = 64

// tzCache keeps time.LoadLocation's answers by TimeZone value (nil for a
// name it cannot load), since every connection asks at startup and the
// lookup reads the time zone database.
var tzCache struct {
	m sync.Map     // string → *time.Location
	n atomic.Int32 // entries stored in m
}

// timeZoneLocation is the *time.Location lib/pq keeps for a TimeZone
// ParameterStatus value (processParameterStatus in lib/pq's conn.go): its
// UTC aliases are time.UTC, other names time.LoadLocation's location, nil
// when that fails. lib/pq loads a new *time.Location per connection; this
// one is shared, the same zone under another pointer.
func timeZoneLocation(tz string) *time.Location {
	for _, n := range utcNames {
		if tz == n {
			return time.UTC
		}
	}
	if l, ok := tzCache.m.Load(tz); ok {
		return l.(*time.Location)
	}
	l, err := time.LoadLocation(tz)
	if err != nil {
		l = nil
	}
	if tzCache.n.Load() < tzCacheMax {
		if _, loaded := tzCache.m.LoadOrStore(tz, l); !loaded {
			tzCache.n.Add(1)
		}
	}
	return l
}

// The reflect.Types of scanType, made once.
var (
	typeInt64   = reflect.TypeFor[int64]()
	typeInt32   = reflect.TypeFor[int32]()
	typeInt16   = reflect.TypeFor[int16]()
	typeFloat64 = reflect.TypeFor[float64]()
	typeFloat32 = reflect.TypeFor[float32]()
	typeString  = reflect.TypeFor[string]()
	typeBool    = reflect.TypeFor[bool]()
	typeTime    = reflect.TypeFor[time.Time]()
	typeBytes   = reflect.TypeFor[[]byte]()
	typeAny     = reflect.TypeFor[any]()
)

// scanType is lib/pq's ColumnTypeScanType for the column.
func (f *pgField) scanType() reflect.Type {
	switch f.oid {
	case oid.T_int8:
		return typeInt64
	case oid.T_int4:
		return typeInt32
	case oid.T_int2:
		return typeInt16
	case oid.T_float8:
		return typeFloat64
	case oid.T_float4:
		return typeFloat32
	case oid.T_varchar, oid.T_text, oid.T_varbit, oid.T_bit:
		return typeString
	case oid.T_bool:
		return typeBool
	case oid.T_date, oid.T_time, oid.T_timetz, oid.T_timestamp, oid.T_timestamptz:
		return typeTime
	case oid.T_bytea:
		return typeBytes
	default:
		return typeAny
	}
}

// databaseTypeName is lib/pq's ColumnTypeDatabaseTypeName: the built-in
// type's upper-case name, "" for any other type.
func (f *pgField) databaseTypeName() string {
	return oid.TypeName[f.oid]
}

// length is lib/pq's ColumnTypeLength. The modifier is widened to int
// before the header is taken off, as lib/pq's int field has it.
func (f *pgField) length() (int64, bool) {
	switch f.oid {
	case oid.T_text, oid.T_bytea:
		return math.MaxInt64, true
	case oid.T_varchar, oid.T_bpchar:
		return int64(int(f.mod) - headerSize), true
	case oid.T_varbit, oid.T_bit:
		return int64(f.mod), true
	default:
		return 0, false
	}
}

// precisionScale is lib/pq's ColumnTypePrecisionScale, with its arithmetic
// on int: a numeric without a modifier (-1) gives 65535 and 65531.
func (f *pgField) precisionScale() (int64, int64, bool) {
	switch f.oid {
	case oid.T_numeric, oid.T__numeric:
		mod := int(f.mod) - headerSize
		return int64((mod >> 16) & 0xffff), int64(mod & 0xffff), true
	default:
		return 0, 0, false
	}
}
