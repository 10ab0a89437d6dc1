package creds

import (
	"encoding/asn1"
	"math/big"
)

// maxP12Iterations bounds the key-derivation work a PKCS#12 file may ask
// for. The count is part of the file, and go-pkcs12 runs whatever it
// says: a corrupted byte can turn 2048 into two billion and hang the
// daemon at start without a word. Real exporters use 1 to 600,000
// (OpenSSL 2048, Java 10,000, OWASP's PBKDF2 advice 600,000).
const maxP12Iterations = 1 << 22

var (
	oidPKCS12PBE = asn1.ObjectIdentifier{1, 2, 840, 113549, 1, 12, 1} // pbeWithSHAAnd…, PKCS#12 appendix C
	oidPBKDF2    = asn1.ObjectIdentifier{1, 2, 840, 113549, 1, 5, 12}
)

// p12MaxIterations returns the largest iteration count reachable without
// decrypting: the MAC's, and those of the PBE and PBKDF2 parameters in
// the authenticated safe and in its plain-data bags (where OpenSSL and
// Keychain put the shrouded key). Anything it cannot parse counts as
// zero and is left for go-pkcs12 to reject.
func p12MaxIterations(data []byte) *big.Int {
	most := new(big.Int)
	var pfx struct {
		Version  int
		AuthSafe asn1.RawValue
		MacData  struct {
			Mac        asn1.RawValue
			Salt       []byte
			Iterations *big.Int `asn1:"optional"`
		} `asn1:"optional"`
	}
	if _, err := asn1.Unmarshal(data, &pfx); err != nil {
		return most
	}
	if n := pfx.MacData.Iterations; n != nil && n.Cmp(most) > 0 {
		most.Set(n)
	}
	walkIterations(pfx.AuthSafe.FullBytes, 0, most)
	return most
}

// walkIterations descends through constructed values, and into OCTET
// STRINGs that hold DER (PKCS#7 data content does), raising most to every
// iteration count it finds.
func walkIterations(der []byte, depth int, most *big.Int) {
	if depth > 24 {
		return
	}
	for len(der) > 0 {
		var v asn1.RawValue
		rest, err := asn1.Unmarshal(der, &v)
		if err != nil {
			return
		}
		der = rest
		switch {
		case v.Class == asn1.ClassUniversal && v.Tag == asn1.TagSequence && v.IsCompound:
			if n := algorithmIterations(v.Bytes); n != nil && n.Cmp(most) > 0 {
				most.Set(n)
			}
			walkIterations(v.Bytes, depth+1, most)
		case v.IsCompound:
			walkIterations(v.Bytes, depth+1, most)
		case v.Class == asn1.ClassUniversal && v.Tag == asn1.TagOctetString && len(v.Bytes) > 0 && v.Bytes[0] == 0x30:
			walkIterations(v.Bytes, depth+1, most)
		}
	}
}

// algorithmIterations reads the body of one SEQUENCE and, when it is a
// PBE or PBKDF2 AlgorithmIdentifier, returns its iteration count: both
// keep it second in their parameters, after the salt.
func algorithmIterations(body []byte) *big.Int {
	var oid asn1.ObjectIdentifier
	rest, err := asn1.Unmarshal(body, &oid)
	if err != nil {
		return nil
	}
	pbe := len(oid) == len(oidPKCS12PBE)+1 && oid[:len(oidPKCS12PBE)].Equal(oidPKCS12PBE)
	if !pbe && !oid.Equal(oidPBKDF2) {
		return nil
	}
	var params, salt asn1.RawValue
	if _, err := asn1.Unmarshal(rest, &params); err != nil || params.Tag != asn1.TagSequence {
		return nil
	}
	afterSalt, err := asn1.Unmarshal(params.Bytes, &salt)
	if err != nil {
		return nil
	}
	var n *big.Int
	if _, err := asn1.Unmarshal(afterSalt, &n); err != nil {
		return nil
	}
	return n
}
