"""neutron-api for uwsgi, plus the mapper fix the test bed needs: without
configure_mappers() the first port listing after each start answers 500
(`type object 'Port' has no attribute 'port_forwardings'`)."""
import sqlalchemy.orm

from neutron.wsgi.api import application  # noqa: F401

sqlalchemy.orm.configure_mappers()
