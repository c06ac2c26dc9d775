package jsonstream

import (
	"encoding/binary"
	"testing"

	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"
)

// message frames a backend message as the server sends it.
func message(typ byte, body []byte) []byte {
	m := []byte{typ, 0, 0, 0, 0}
	binary.BigEndian.PutUint32(m[1:], uint32(len(body)+4))
	return append(m, body...)
}

func errorBody(fields ...string) []byte {
	var b []byte
	for _, f := range fields {
		b = append(append(b, f...), 0)
	}
	return append(b, 0)
}

func TestLastFatal(t *testing.T) {
	fatal := message('E', errorBody("SFATAL", "VFATAL", "C57P01", "Mterminating connection due to administrator command", "Fpostgres.c", "L3202", "RProcessInterrupts"))
	dataRow := message('D', []byte{0, 1, 0, 0, 0, 3, 'a', 'b', 'c'})
	t.Run("after rows", func(t *testing.T) {
		pe := lastFatal(append(append([]byte{}, dataRow...), fatal...))
		require.NotNil(t, pe)
		assert.Equal(t, "FATAL", pe.Severity)
		assert.Equal(t, "57P01", string(pe.Code))
		assert.Equal(t, "terminating connection due to administrator command", pe.Message)
		assert.Equal(t, "postgres.c", pe.File)
		assert.Equal(t, "3202", pe.Line)
		assert.Equal(t, "ProcessInterrupts", pe.Routine)
	})
	t.Run("every field", func(t *testing.T) {
		pe := lastFatal(message('E', errorBody("SFATAL", "C25P03", "Mm", "Dd", "Hh", "P1", "p2", "qq", "Ww", "ss", "tt", "cc", "dd", "nn", "Ff", "L9", "Rr")))
		require.NotNil(t, pe)
		assert.Equal(t, []string{"d", "h", "1", "2", "q", "w", "s", "t", "c", "d", "n"},
			[]string{pe.Detail, pe.Hint, pe.Position, pe.InternalPosition, pe.InternalQuery, pe.Where, pe.Schema, pe.Table, pe.Column, pe.DataTypeName, pe.Constraint})
	})
	for name, b := range map[string][]byte{
		"an ERROR, not a FATAL":   message('E', errorBody("SERROR", "C22012", "Mdivision by zero")),
		"rows only":               dataRow,
		"cut short":               fatal[:len(fatal)-3],
		"more after it":           append(append([]byte{}, fatal...), dataRow...),
		"no code":                 message('E', errorBody("SFATAL", "Mx")),
		"a field left open":       message('E', []byte("SFATAL\x00C57P01")),
		"empty":                   nil,
		"shorter than the header": {'E', 0, 0},
	} {
		t.Run(name, func(t *testing.T) { assert.Nil(t, lastFatal(b)) })
	}
}

// FuzzLastFatal: whatever the last read holds, the parse never panics,
// and what it finds is a FATAL with a code.
func FuzzLastFatal(f *testing.F) {
	f.Add(message('E', errorBody("SFATAL", "C57P01", "Mbye")))
	f.Add([]byte("E\x00\x00\x00\x05\x00"))
	f.Fuzz(func(t *testing.T, b []byte) {
		if pe := lastFatal(b); pe != nil {
			assert.Equal(t, "FATAL", pe.Severity)
			assert.Len(t, string(pe.Code), 5)
		}
	})
}

// TestEndsSessionUntranslated: the severity that decides whether an error
// ends the session is the untranslated V field when the server sends it
// (under lc_messages=ru_RU, S says ВАЖНО for FATAL), S otherwise; PANIC
// ends the session as FATAL does.
func TestEndsSessionUntranslated(t *testing.T) {
	for name, tc := range map[string]struct {
		body []byte
		ends bool
	}{
		"translated FATAL":           {errorBody("SВАЖНО", "VFATAL", "C57P01", "Mx"), true},
		"translated ERROR":           {errorBody("SОШИБКА", "VERROR", "C22012", "Mx"), false},
		"FATAL without V":            {errorBody("SFATAL", "C57P01", "Mx"), true},
		"PANIC":                      {errorBody("SPANIC", "VPANIC", "CXX000", "Mx"), true},
		"S says FATAL, V says ERROR": {errorBody("SFATAL", "VERROR", "C22012", "Mx"), false},
		"a notice":                   {errorBody("SNOTICE", "VNOTICE", "C00000", "Mx"), false},
	} {
		t.Run(name, func(t *testing.T) {
			pe := endsSession(tc.body)
			assert.Equal(t, tc.ends, pe != nil)
			if pe != nil {
				assert.Equal(t, pe, lastFatal(message('E', tc.body)), "the look at the last read agrees")
			}
		})
	}
	pe := endsSession(errorBody("SВАЖНО", "VFATAL", "C57P01", "Mx"))
	require.NotNil(t, pe)
	assert.Equal(t, "ВАЖНО", pe.Severity, "the error keeps lib/pq's severity field")
}
