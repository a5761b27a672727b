"""Account backends: iRedMail's vmail database (SQL) or directory (LDAP), and a fake."""
