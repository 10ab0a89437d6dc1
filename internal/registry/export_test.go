package registry

// MailboxLists is how many shared mailbox lists memory holds, for the
// tests of package registry_test.
func MailboxLists(r *Registry) int {
	r.mu.RLock()
	defer r.mu.RUnlock()
	return len(r.idx.boxes)
}
