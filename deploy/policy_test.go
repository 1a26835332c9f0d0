package deploy_test

import (
	"slices"
	"strings"
	"testing"

	admissionv1 "k8s.io/api/admissionregistration/v1"
)

// Every write RBAC grants the agents on PVs, claims and
// VolumeSnapshotContents, subresources included, goes through a
// ValidatingAdmissionPolicy, bound to deny, that can hold it to the agent's
// own node: RBAC alone lets every agent write every node's. A new verb or
// subresource for the agents (the resizer's persistentvolumeclaims/status)
// must come with a policy that matches it.
func TestNodePolicyCoversEveryAgentWrite(t *testing.T) {
	objs := render(t, "base")
	operation := map[string]admissionv1.OperationType{
		"create": admissionv1.Create, "update": admissionv1.Update, "patch": admissionv1.Update, "delete": admissionv1.Delete,
	}
	var enforced []*admissionv1.ValidatingAdmissionPolicy
	for _, p := range all[*admissionv1.ValidatingAdmissionPolicy](objs) {
		if slices.ContainsFunc(all[*admissionv1.ValidatingAdmissionPolicyBinding](objs), func(b *admissionv1.ValidatingAdmissionPolicyBinding) bool {
			return b.Spec.PolicyName == p.Name && slices.Contains(b.Spec.ValidationActions, admissionv1.Deny)
		}) {
			enforced = append(enforced, p)
		}
	}
	// The objects of one node: a volume, its claim, its snapshots.
	nodeObjects := map[string][]string{
		"":                        {"persistentvolumes", "persistentvolumeclaims"},
		"snapshot.storage.k8s.io": {"volumesnapshotcontents"},
	}
	checked := map[string]bool{}
	for _, g := range granted(t, clusterRole(t, objs, agentName).Rules) {
		op, write := operation[g.verb]
		resource, _, _ := strings.Cut(g.resource, "/")
		if !write || !slices.Contains(nodeObjects[g.group], resource) {
			continue
		}
		checked[resource] = true
		if !slices.ContainsFunc(enforced, func(p *admissionv1.ValidatingAdmissionPolicy) bool { return matches(p, g.group, g.resource, op) }) {
			t.Errorf("the agents may %s %q, but no policy bound to deny matches %s on it", g.verb, g.resource, op)
		}
	}
	if len(checked) != 3 {
		t.Errorf("agent writes found on %v only; is the ClusterRole rendered?", checked)
	}
}

// matches reports whether the policy's match constraints select op on
// resource (which may name a subresource) in group.
func matches(p *admissionv1.ValidatingAdmissionPolicy, group, resource string, op admissionv1.OperationType) bool {
	if p.Spec.MatchConstraints == nil {
		return false
	}
	parent, _, _ := strings.Cut(resource, "/")
	return slices.ContainsFunc(p.Spec.MatchConstraints.ResourceRules, func(r admissionv1.NamedRuleWithOperations) bool {
		return (slices.Contains(r.APIGroups, group) || slices.Contains(r.APIGroups, "*")) &&
			(slices.Contains(r.Resources, resource) || slices.Contains(r.Resources, "*") ||
				(parent != resource && slices.Contains(r.Resources, parent+"/*"))) &&
			(slices.Contains(r.Operations, op) || slices.Contains(r.Operations, admissionv1.OperationAll))
	})
}
