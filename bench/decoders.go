package bench

import (
	"github.com/bytedance/sonic"
	gojson "github.com/goccy/go-json"
)

// Decoder is a JSON decoder that jsonstream.Each can use through
// jsonstream.WithUnmarshal.
type Decoder struct {
	// Name names the decoder in benchmark names and in the report.
	Name string
	// Unmarshal is given to WithUnmarshal; nil leaves Each's default,
	// encoding/json.
	Unmarshal func(data []byte, v any) error
}

// Decoder names.
const (
	// RawDrain is no decoder: the documents read as sql.RawBytes through
	// jsonstream, the baseline of the typed-decoding ratios.
	RawDrain     = "raw"
	EncodingJSON = "encoding-json"
	Sonic        = "sonic"
	GoccyJSON    = "goccy"
	// JSONv2 is encoding/json/v2, in Decoders only in a build with
	// GOEXPERIMENT=jsonv2.
	JSONv2 = "json-v2"
)

// Decoders are the decoders BenchmarkTypedDecode compares with Each, in
// the report's order. A build with GOEXPERIMENT=jsonv2 adds JSONv2, and
// then encoding/json itself runs on the v2 implementation.
var Decoders = []Decoder{
	{Name: EncodingJSON},
	{Name: Sonic, Unmarshal: sonic.Unmarshal},
	{Name: GoccyJSON, Unmarshal: gojson.Unmarshal},
}
