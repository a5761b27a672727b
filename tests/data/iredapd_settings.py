############################################################
# DO NOT TOUCH BELOW LINE.
#
# Import default settings.
# You can always override default settings by placing custom settings in this
# file.
from libs.default_settings import *

############################################################
# Listen address and port.
listen_address = "127.0.0.1"
listen_port = "7777"

# Run as a low privileged user.
run_as_user = "iredapd"

# Path to pid file.
pid_file = "/var/run/iredapd.pid"

# Log level: info, debug.
log_level = "info"

# Backend: ldap, mysql, pgsql.
backend = "mysql"

# Enabled plugins.
plugins = ["reject_null_sender", "reject_to_hostname"]

# SRS
srs_secrets = ["a-long-secret"]
srs_domain = "mx.example.com"

# For LDAP backend.
ldap_uri = "ldap://127.0.0.1:389"
ldap_basedn = "o=domains,dc=example,dc=com"
ldap_binddn = "cn=vmail,dc=example,dc=com"
ldap_bindpw = "secret"

# For SQL (MySQL/MariaDB/PostgreSQL) backends, used to query mail accounts.
vmail_db_server = "127.0.0.1"
vmail_db_port = "3306"
vmail_db_name = "vmail"
vmail_db_user = "vmail"
vmail_db_password = "secret"

# For Amavisd policy lookup and white/blacklists.
amavisd_db_server = "127.0.0.1"
amavisd_db_port = "3306"
amavisd_db_name = "amavisd"
amavisd_db_user = "amavisd"
amavisd_db_password = "secret"

# iRedAPD database, used to store greylisting, throttle settings.
iredapd_db_server = "127.0.0.1"
iredapd_db_port = "3306"
iredapd_db_name = "iredapd"
iredapd_db_user = "iredapd"
iredapd_db_password = "secret"

# mlmmjadmin API
mlmmjadmin_api_auth_token = "token"

# Custom settings, overriding the defaults.
MYNETWORKS = ["192.168.0.0/16", "10.1.2.3", "172.16.*.*"]
PLUGIN_PRIORITIES["reject_to_hostname"] = 120
GREYLISTING_MESSAGE = "Greylisted, come back later"
