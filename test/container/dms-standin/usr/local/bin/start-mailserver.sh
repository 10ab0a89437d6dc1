#!/usr/bin/env bash
# start-mailserver.sh of the docker-mailserver stand-in: what
# docker-mailserver's script of that name does that xapsd depends on.
# supervisord runs it when the container starts; it reads the accounts from
# the config volume, writes Dovecot's and Postfix's maps from them, and
# then starts Dovecot and Postfix through supervisorctl.
#
# /tmp/docker-mailserver/postfix-accounts.cf has one account a line,
# ADDRESS|PASSWORD-HASH (what `setup email add` writes; any scheme Dovecot
# knows, {PLAIN}secret too). /tmp/docker-mailserver/dovecot.cf, if there is
# one, becomes /etc/dovecot/local.conf, read after conf.d/.
set -euo pipefail

config=/tmp/docker-mailserver
say() { printf '[ stand-in ] %s\n' "$*"; }

install -d -m 0755 -o docker -g docker /var/mail
install -d -m 0755 /var/log/mail /var/mail-state
userdb=/etc/dovecot/userdb
: >"$userdb.new"
: >/etc/postfix/vmailbox
: >/etc/postfix/vhost.new
if [ -f "$config/postfix-accounts.cf" ]; then
	while IFS='|' read -r address hash _; do
		case $address in "" | "#"*) continue ;; esac
		domain=${address#*@}
		user=${address%@*}
		printf '%s:%s:5000:5000::/var/mail/%s/%s/home::\n' "$address" "$hash" "$domain" "$user" >>"$userdb.new"
		printf '%s %s/%s/\n' "$address" "$domain" "$user" >>/etc/postfix/vmailbox
		echo "$domain" >>/etc/postfix/vhost.new
	done <"$config/postfix-accounts.cf"
fi
sort -u /etc/postfix/vhost.new >/etc/postfix/vhost
rm -f /etc/postfix/vhost.new
chown root:dovecot "$userdb.new"
chmod 0640 "$userdb.new"
mv "$userdb.new" "$userdb"
if [ -f "$config/dovecot.cf" ]; then
	cp "$config/dovecot.cf" /etc/dovecot/local.conf
else
	rm -f /etc/dovecot/local.conf
fi
# Postfix's queue folders, which Dovecot's LMTP socket goes into.
postfix check
say "$(wc -l <"$userdb") accounts; starting Postfix and Dovecot"

supervisorctl start postfix dovecot
say "mail server is up"
