package main

import (
	"net/http"
	"net/http/httptest"
	"testing"
	"time"

	"github.com/google/go-cmp/cmp"
	"k8s.io/apimachinery/pkg/types"

	"github.com/stickyvol/stickyvol/provisioner"
)

// TestVolumesHandler pins the document `stickyvol status` reads, byte for
// byte: its field names and time format are what clients of every version
// depend on.
func TestVolumesHandler(t *testing.T) {
	checked := time.Date(2026, 11, 29, 11, 55, 0, 0, time.UTC)
	findings := provisioner.Findings{
		Checked: checked,
		Orphans: []provisioner.Orphan{{VolumeID: "pvc-leaked", Since: checked.Add(-2 * time.Hour)}},
		Missing: []provisioner.MissingVolume{
			{PV: "pvc-wiped", VolumeID: "pvc-wiped", Claim: types.NamespacedName{Namespace: "web", Name: "data-web-1"}},
			{PV: "pvc-static", VolumeID: "by-hand"},
		},
	}
	unavailable := map[string]string{"pvc-z": "its record was corrupt", "pvc-a": "also corrupt"}
	for _, tc := range []struct {
		name        string
		findings    provisioner.Findings
		unavailable map[string]string
		want        string
	}{
		{"findings", findings, unavailable, `{"apiVersion":"stickyvol.dev/v1","kind":"NodeVolumes","node":"node-a",` +
			`"checked":"2026-11-29T11:55:00Z",` +
			`"orphans":[{"volumeID":"pvc-leaked","since":"2026-11-29T09:55:00Z"}],` +
			`"missing":[{"pv":"pvc-wiped","volumeID":"pvc-wiped","claimNamespace":"web","claim":"data-web-1"},` +
			`{"pv":"pvc-static","volumeID":"by-hand"}],` +
			`"unavailable":[{"volumeID":"pvc-a","reason":"also corrupt"},{"volumeID":"pvc-z","reason":"its record was corrupt"}]}`},
		// Before the first check: no time, and lists that are empty, not null.
		{"not checked yet", provisioner.Findings{}, nil, `{"apiVersion":"stickyvol.dev/v1","kind":"NodeVolumes","node":"node-a",` +
			`"orphans":[],"missing":[],"unavailable":[]}`},
	} {
		t.Run(tc.name, func(t *testing.T) {
			srv := httptest.NewServer(volumesHandler("node-a",
				func() provisioner.Findings { return tc.findings },
				func() map[string]string { return tc.unavailable }))
			defer srv.Close()
			code, body := get(t, srv.URL+"/volumes")
			if code != http.StatusOK {
				t.Fatalf("status %d: %s", code, body)
			}
			if diff := cmp.Diff(tc.want+"\n", body); diff != "" {
				t.Errorf("document (-want +got):\n%s", diff)
			}
		})
	}
}
