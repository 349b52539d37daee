package netconf

import (
	"encoding/json"
	"fmt"

	"github.com/containernetworking/cni/pkg/types"
)

// Fields is a JSON object decoded one key at a time, so that a bad value is
// reported with the name of the key that holds it instead of the generic
// "cannot unmarshal" message encoding/json produces for a whole struct.
type Fields map[string]json.RawMessage

// DecodeFields splits a JSON object into its keys. where names the object in
// errors ("network config", "ipam").
func DecodeFields(data []byte, where string) (Fields, error) {
	var f Fields
	if err := json.Unmarshal(data, &f); err != nil {
		return nil, Invalid("%s is not a JSON object: %v", where, err)
	}
	if f == nil {
		return nil, Invalid("%s is not a JSON object (null)", where)
	}
	return f, nil
}

// String decodes key into dst when present. It reports whether the key was set.
func (f Fields) String(key, path string, dst *string) (bool, error) {
	raw, ok := f[key]
	if !ok || isNull(raw) {
		return false, nil
	}
	if err := json.Unmarshal(raw, dst); err != nil {
		return true, Invalid("field %s: must be a string, got %s", path, kind(raw))
	}
	return true, nil
}

// Bool decodes key into dst when present.
func (f Fields) Bool(key, path string, dst *bool) error {
	raw, ok := f[key]
	if !ok || isNull(raw) {
		return nil
	}
	if err := json.Unmarshal(raw, dst); err != nil {
		return Invalid("field %s: must be true or false, got %s", path, kind(raw))
	}
	return nil
}

// Int decodes key into dst when present.
func (f Fields) Int(key, path string, dst *int) error {
	raw, ok := f[key]
	if !ok || isNull(raw) {
		return nil
	}
	if err := json.Unmarshal(raw, dst); err != nil {
		return Invalid("field %s: must be an integer, got %s", path, kind(raw))
	}
	return nil
}

// Object returns the sub-object under key, or nil when absent.
func (f Fields) Object(key, path string) (Fields, error) {
	raw, ok := f[key]
	if !ok || isNull(raw) {
		return nil, nil
	}
	var sub Fields
	if err := json.Unmarshal(raw, &sub); err != nil {
		return nil, Invalid("field %s: must be an object, got %s", path, kind(raw))
	}
	return sub, nil
}

// Invalid builds the CNI error for a bad network configuration (code 7).
func Invalid(format string, a ...any) *types.Error {
	return types.NewError(types.ErrInvalidNetworkConfig, "invalid network config: "+fmt.Sprintf(format, a...), "")
}

func isNull(raw json.RawMessage) bool { return string(raw) == "null" }

// kind names the JSON type of raw for error messages without echoing the
// (possibly huge) value itself.
func kind(raw json.RawMessage) string {
	if len(raw) == 0 {
		return "nothing"
	}
	switch raw[0] {
	case '"':
		return "a string"
	case '{':
		return "an object"
	case '[':
		return "an array"
	case 't', 'f':
		return "a boolean"
	case 'n':
		return "null"
	default:
		return "a number"
	}
}
